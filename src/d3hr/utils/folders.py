"""Folders d3hr writes into: claimed with a marker file, never taken over from the user; and the cache.

A folder is d3hr's when it holds the marker ``.d3hr-run`` (written first, before anything else) or, for folders
written before the marker existed, the files only d3hr leaves there (LEGACY). ``claim`` accepts an absent or empty
folder (and marks it) or a d3hr folder of the same kind; anything else is refused with one line, so that nothing d3hr
did not write is ever overwritten, deleted or listed as its own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from d3hr import __version__
from d3hr.errors import D3HRError
from d3hr.utils.io import read_json, write_json
from d3hr.utils.schema import MARKER as MARKER_SPEC
from d3hr.utils.schema import check

MARKER = ".d3hr-run"
MARKER_VERSION = 1
KINDS = {"run": "run folder", "compare": "compare folder", "generator": "fine-tuned generator folder"}

def _legacy_run(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path / "stages.json").is_file()


def _legacy_compare(path: Path) -> bool:
    if (path / "results.json").is_file():
        return True
    runs = path / "runs"
    cells = [p for p in runs.iterdir() if not p.name.startswith(".")] if runs.is_dir() else []
    return bool(cells) and all(p.is_dir() and (is_marked(p, "run") or _legacy_run(p)) for p in cells)


def _legacy_generator(path: Path) -> bool:
    from d3hr.generator.model import INFO_FILE

    info = path / INFO_FILE
    if not info.is_file():
        return False
    data = read_json(info)
    return isinstance(data, dict) and "finetune" in str(data.get("trained_by", ""))


LEGACY: dict[str, Callable[[Path], bool]] = {"run": _legacy_run, "compare": _legacy_compare,
                                             "generator": _legacy_generator}


def marker_kind(path: Path) -> str | None:
    """The kind recorded in PATH/.d3hr-run, or None when there is no marker."""
    marker = path / MARKER
    if not marker.is_file():
        return None
    return check(read_json(marker), MARKER_SPEC, marker)["kind"]


def is_marked(path: Path, kind: str) -> bool:
    return marker_kind(path) == kind


def owns(path: str | os.PathLike, kind: str = "run") -> bool:
    """Whether ``path`` is a d3hr folder of ``kind``: marked, or laid out as d3hr left it before markers."""
    path = Path(path)
    if not path.is_dir():
        return False
    found = marker_kind(path)
    return found == kind if found is not None else LEGACY[kind](path)


def write_marker(path: Path, kind: str) -> None:
    """Write PATH/.d3hr-run: this folder is d3hr's (``kind``)."""
    write_json(path / MARKER, {"format_version": MARKER_VERSION, "kind": kind, "written_by": f"d3hr {__version__}"})


def claim(path: str | os.PathLike, kind: str = "run", create: bool = True) -> Path:
    """Make ``path`` a d3hr folder of ``kind`` to write into, or refuse with one line naming it.

    Absent or empty: created and marked (with ``create``; else left absent, for a folder that appears whole at the
    end). Already d3hr's (marked or LEGACY): marked if it was not. Otherwise (a file, a folder of the user's, a d3hr
    folder of another kind) a D3HRError; an OSError creating it is one too.
    """
    path = Path(path)
    what = KINDS[kind]
    if path.exists() and not path.is_dir():
        raise D3HRError(f"{path} exists and is not a folder; give a new or empty folder for the {what}")
    if not create and not path.exists():
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        found = marker_kind(path)
        if found is not None and found != kind:
            raise D3HRError(f"{path} is a d3hr {KINDS.get(found, found)}, not a {what}; give another folder")
        if found is None:
            if any(path.iterdir()) and not LEGACY[kind](path):
                raise D3HRError(f"{path} is not empty and was not written by d3hr; refusing to write the {what} "
                                "there (give a new or empty folder)")
            write_marker(path, kind)
    except OSError as exc:
        raise D3HRError(f"cannot write the {what} {path}: {exc.strerror or exc}") from None
    return path


def cache_dir(configured: str | None = None) -> Path:
    """Where d3hr caches generators, statistics and teachers: ``configured`` (generator.cache_dir), else
    $D3HR_CACHE, else ~/.cache/d3hr."""
    if configured:
        return Path(configured)
    return Path(os.environ.get("D3HR_CACHE") or Path.home() / ".cache" / "d3hr")


def writable_cache(folder: Path) -> Path:
    """Create the cache ``folder`` if needed and write a probe file in it; a one-line D3HRError naming it if either
    fails (before any work that would write there)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".d3hr-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise D3HRError(f"cache folder {folder} is not writable ({exc.strerror or exc}); set D3HR_CACHE or "
                        "generator.cache_dir to a writable folder") from None
    return folder
