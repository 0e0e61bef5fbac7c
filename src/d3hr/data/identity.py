"""A dataset's identity that changes when its images change: what every cache of d3hr keys on.

Three levels (``data.fingerprint``):
- ``sample`` (default): the sorted relative paths with their sizes and modification times, the labels, and the
  bytes of a seeded sample of ``SAMPLE_FILES`` files; in-memory datasets hash all their pixels and labels (cheap).
  Replacing, adding, removing or touching a file changes it; stat-ing 1.28 M ImageNet files takes seconds.
- ``full``: the bytes of every file as well (for data rewritten with the same sizes and times, e.g. by rsync -t).
- ``trust``: the paths and labels only (for a read-only archive on a slow filesystem): d3hr then cannot tell
  that a file's content changed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from d3hr.config import FINGERPRINTS
from d3hr.data.images import ImageSet
from d3hr.errors import D3HRError

SAMPLE_FILES = 64


def _common_root(files: list[Path]) -> Path:
    return Path(os.path.commonpath([str(f.parent) for f in files])) if files else Path()


def fingerprint(ds: ImageSet, mode: str = "sample", seed: int = 0) -> str:
    """sha256 (hex) of the dataset's images and labels at the level ``mode`` (see the module docstring)."""
    if mode not in FINGERPRINTS:
        raise D3HRError(f"data.fingerprint must be one of {', '.join(FINGERPRINTS)}, got {mode!r}")
    h = hashlib.sha256()
    h.update(f"{ds.name}\n{len(ds.classes)}\n".encode())
    for name in ds.classes:
        h.update(f"{name}\n".encode())
    h.update(np.ascontiguousarray(ds.targets, dtype=np.int64).tobytes())
    if ds.pixels is not None:
        h.update(str(tuple(ds.pixels.shape)).encode())
        h.update(ds.pixels.contiguous().numpy().tobytes())
        return h.hexdigest()
    root = _common_root(ds.files)
    for f in ds.files:
        rel = f.relative_to(root).as_posix()
        if mode == "trust":
            h.update(f"{rel}\n".encode())
            continue
        try:
            st = f.stat()
        except OSError as exc:
            raise D3HRError(f"cannot read image {f}: {exc.strerror or exc}") from None
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    if mode == "trust":
        return h.hexdigest()
    if mode == "full":
        chosen = range(len(ds.files))
    else:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(ds.files), min(SAMPLE_FILES, len(ds.files)), replace=False)).tolist()
    for i in chosen:
        try:
            h.update(hashlib.sha256(ds.files[i].read_bytes()).digest())
        except OSError as exc:
            raise D3HRError(f"cannot read image {ds.files[i]}: {exc.strerror or exc}") from None
    return h.hexdigest()
