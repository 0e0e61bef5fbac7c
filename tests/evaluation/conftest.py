"""A tiny digits run folder: real training images as the 'distilled' set (IPC 5), a resolved config.yaml and a
manifest listing the images; and a cache of its own for each test (teachers of other epochs live elsewhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d3hr.config import Config
from d3hr.data import load_dataset
from d3hr.utils.io import sha256_file, write_json, write_text

IPC = 5
TEACHER_EPOCHS = 4  # every test that trains a teacher passes this (SGD needs ~60 steps to pass 50% on digits)


def write_manifest(root: Path) -> None:
    """RUN/manifest.json listing every PNG under RUN/images with its sha256, as distill writes it."""
    classes = [str(c) for c in range(10)]
    files = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted((root / "images").rglob("*.png"))}
    write_json(root / "manifest.json", {"format_version": 1, "classes": dict(zip(classes, classes)),
                                        "class_folders": [f"{c}_{c}" for c in classes], "method": "random-real",
                                        "ipc": IPC, "files": files})


def make_run(root: Path, ipc: int = IPC) -> Path:
    """RUN/config.yaml (digits), RUN/images/<i>_<i>/NNNNN.png with ``ipc`` real training images per class and
    RUN/manifest.json."""
    cfg = Config(out=str(root))
    train = load_dataset(cfg.data, "train")
    rng = np.random.default_rng(0)
    for c in range(len(train.classes)):
        idx = rng.choice(np.flatnonzero(train.targets == c), ipc, replace=False)
        folder = root / "images" / f"{c}_{c}"
        folder.mkdir(parents=True)
        for i, img in enumerate(train.load(idx)):  # (1, 8, 8) uint8
            Image.fromarray(img[0].numpy()).save(folder / f"{i:05d}.png")
    write_text(root / "config.yaml", cfg.to_yaml())
    write_manifest(root)
    return root


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Teachers are cached in $D3HR_CACHE: each test starts from an empty cache (tests train teachers of different
    epochs, and a cached teacher of other epochs is an error)."""
    monkeypatch.setenv("D3HR_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is faster, and far faster on a busy machine (measured 60x: 3.5 s -> 0.06 s
    for two epochs when another job holds both cores and two threads wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")
