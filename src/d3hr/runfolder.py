"""The run folder (DESIGN.md section 1), defined in one place: file names, class folders, PNG writing, the images a
manifest lists, the lock, the stage records and the manifest. Used by distill, evaluate, report and the bench scripts.

```
RUN/
  .d3hr-run  config.yaml  generator.json  stats.safetensors  selection.safetensors  stages.json  manifest.json
  images/<i>_<class>/NNNNN.png      eval/results.json      report.html
```
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from d3hr.errors import D3HRError
from d3hr.utils.folders import MARKER, claim
from d3hr.utils.io import read_json, replace_dir, sha256_file, write_json, write_text
from d3hr.utils.schema import STAGES as STAGES_SPEC
from d3hr.utils.schema import check

FORMAT_VERSION = 1
CONFIG, STAGES_FILE, MANIFEST, POINTER = "config.yaml", "stages.json", "manifest.json", "generator.json"
STATS, STATS_PARTIAL, SELECTION = "stats.safetensors", "stats.partial.safetensors", "selection.safetensors"
IMAGES, IMAGES_PARTIAL, EVAL, REPORT = "images", "images.partial", "eval", "report.html"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

# The files of a run that its manifest lists (besides the PNGs of the class folders d3hr wrote under images/) ...
RUN_LISTED = (CONFIG, POINTER, STATS, SELECTION, STAGES_FILE)
# ... and those d3hr writes there without listing them: d3hr verify does not report these.
RUN_UNLISTED = (MARKER, ".lock", MANIFEST, REPORT)
RUN_UNLISTED_FOLDERS = (EVAL, IMAGES_PARTIAL)  # evaluation records; generation in progress

def is_own_unlisted(rel: str) -> bool:
    """Whether the run file at POSIX path ``rel`` is one d3hr writes without listing it in the manifest: RUN_UNLISTED,
    anything under RUN_UNLISTED_FOLDERS, partial inversion state, or a temporary file of an interrupted write."""
    parts = rel.split("/")
    name = parts[-1]
    temporary = name.startswith(".") and (".tmp" in name or name.endswith(".old"))
    in_old = any(p.startswith(".") and p.endswith(".old") for p in parts[:-1])  # replace_dir's previous folder
    return rel in RUN_UNLISTED or rel == STATS_PARTIAL or parts[0] in RUN_UNLISTED_FOLDERS or temporary or in_old


_UNSAFE = re.compile(r"[^A-Za-z0-9._ +-]+")


def safe_class_dir(name: str) -> str:
    """A folder name for a class that cannot leave its parent folder: separators, NUL and '..' are replaced."""
    out = _UNSAFE.sub("_", name).strip(" .")
    if not out:
        raise D3HRError(f"class name {name!r} gives an empty folder name")
    return out


def class_folder_names(classes: list[str]) -> list[str]:
    """Safe, unique folder names that sort in class order for torchvision's ImageFolder: ``<i>_<class>``."""
    width = len(str(len(classes) - 1))
    return [f"{i:0{width}d}_{safe_class_dir(name)}" for i, name in enumerate(classes)]


def image_name(i: int) -> str:
    """The file name of the ``i``-th image of a class folder."""
    return f"{i:05d}.png"


def save_class_pngs(folder: Path, images: Any) -> None:
    """Write (N, C, H, W) uint8 images as folder/00000.png ... into a temporary folder, then rename it to ``folder``."""
    from PIL import Image

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, img in enumerate(images):
        arr = img.permute(1, 2, 0).numpy()
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(tmp / image_name(i))
    replace_dir(tmp, folder)


def class_folders(images_dir: str | Path) -> list[Path]:
    """The class folders of an ImageFolder in sorted (= class index) order, hidden temporary folders left out."""
    return sorted(p for p in Path(images_dir).iterdir() if p.is_dir() and not p.name.startswith("."))


def selection_counts(tensors: dict[str, Any], ipc: int) -> Any:
    """Images per class of a selection.safetensors, (C,) int64: its ``count`` tensor (methods whose classes can be
    short), else ``ipc`` for every class (group draws, whose classes always have ipc members)."""
    if "count" in tensors:
        return tensors["count"]
    import torch

    num_classes = len(next(iter(v for k, v in tensors.items() if k in ("latents", "image_index"))))
    return torch.full((num_classes,), ipc, dtype=torch.long)


def listed_images(root: Path, manifest: dict[str, Any]) -> list[tuple[int, str, str]]:
    """(class index, path relative to RUN, sha256) of every image the (checked) manifest lists under
    images/<class folder>/, in class order then name order; a class folder with no listed image is an error."""
    path = root / MANIFEST
    listed = {rel: digest for rel, digest in manifest["files"].items()
              if rel.startswith(f"{IMAGES}/") and rel.count("/") == 2 and Path(rel).suffix.lower() in IMAGE_SUFFIXES}
    folders = manifest.get("class_folders") or sorted({rel.split("/")[1] for rel in listed})
    out = []
    for c, name in enumerate(folders):
        found = sorted(rel for rel in listed if rel.split("/")[1] == name)
        if not found:
            raise D3HRError(f"{path} lists no images in the class folder {root / IMAGES / name}")
        out += [(c, rel, listed[rel]) for rel in found]
    return out


class RunFolder:
    """One run folder: its lock, its stage records (stages.json) and its manifest. Under torchrun only rank 0
    (``main``) writes."""

    def __init__(self, root: str | Path, main: bool = True):
        self.root = Path(root)
        self.main = main

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def state(self) -> dict[str, Any]:
        """stages.json: per stage its key, seconds, peak memory and details ({} before the first stage)."""
        path = self.root / STAGES_FILE
        return check(read_json(path), STAGES_SPEC, path) if path.is_file() else {}

    def record(self, stage: str, key: str, seconds: float, peak_rss_mb: float, **extra: Any) -> None:
        """Record that ``stage`` finished with ``key``."""
        if not self.main:
            return
        state = self.state()
        state[stage] = {"key": key, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb, 1), **extra}
        write_json(self.root / STAGES_FILE, state)

    def forget(self, stages: list[str]) -> None:
        """Drop the records of ``stages``."""
        state = self.state()
        if self.main and any(state.pop(s, None) is not None for s in stages):
            write_json(self.root / STAGES_FILE, state)

    def done(self, stage: str, key: str, outputs: list[str]) -> bool:
        """Whether ``stage`` finished with ``key`` and its ``outputs`` (names in RUN) exist."""
        rec = self.state().get(stage)
        return bool(rec and rec.get("key") == key and all((self.root / p).exists() for p in outputs))

    @contextmanager
    def lock(self, config_yaml: str) -> Iterator[None]:
        """Claim the folder (empty, new or d3hr's own), hold RUN/.lock and write config.yaml; a second process
        writing the same run folder is refused."""
        claim(self.root, "run")  # never a folder of the user's
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise D3HRError(f"run folder {self.root} is in use by another d3hr process") from None
            write_text(self.root / CONFIG, config_yaml)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def remove(self, names: list[str]) -> list[str]:
        """Remove the d3hr files or folders ``names`` that exist; returns those removed."""
        gone = []
        for name in names:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            gone.append(name)
        return gone

    def write_manifest(self, listed: list[str], images: list[str], fields: dict[str, Any]) -> Path:
        """manifest.json: ``fields`` and the sha256 of the run files ``listed`` (those that exist) and of every
        image in ``images`` (paths relative to RUN; a missing one is an error): nothing else is listed as the run's."""
        files = {name: sha256_file(self.root / name) for name in listed if (self.root / name).is_file()}
        for rel in images:
            if not (self.root / rel).is_file():
                raise D3HRError(f"{self.root / rel} is missing; delete {self.root / IMAGES} to generate it again")
            files[rel] = sha256_file(self.root / rel)
        path = self.root / MANIFEST
        write_json(path, {"format_version": FORMAT_VERSION, **fields, "files": files})
        return path
