"""Checking a run folder against its manifest (``d3hr verify``): reads files and JSON only, never torch."""

from __future__ import annotations

import os
from pathlib import Path

from d3hr.errors import D3HRError
from d3hr.runfolder import is_own_unlisted
from d3hr.utils.io import read_json, sha256_file
from d3hr.utils.schema import check_manifest


def verify(path: str | Path) -> list[str]:
    """Compare every file listed in RUN/manifest.json with its sha256; returns one line per problem (none: intact).

    Reports files that changed, files that are missing, and every file in the run folder that the manifest does not
    list, except those d3hr writes there unlisted (d3hr.runfolder.is_own_unlisted: eval/, report.html, ...).
    """
    root = Path(path)
    if not (root / "manifest.json").is_file():
        raise D3HRError(f"{root} has no manifest.json: not a distilled run folder")
    files = check_manifest(read_json(root / "manifest.json"), root / "manifest.json")["files"]
    problems = []
    for rel, digest in sorted(files.items()):
        p = root / rel
        if not p.resolve().is_relative_to(root.resolve()):
            problems.append(f"{rel}: path leaves the run folder")
        elif not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel}: sha256 differs from the manifest")
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names + [d for d in dirs if (Path(folder) / d).is_symlink()]):
            rel = (Path(folder) / name).relative_to(root).as_posix()
            if rel not in files and not is_own_unlisted(rel):
                problems.append(f"{rel}: not in the manifest")
    return problems
