"""The teacher that gives soft labels: trained once per dataset on the full training set, cached, shared by every
method evaluated beside it.

Cache layout, in d3hr's cache (generator.cache_dir, else $D3HR_CACHE, else ~/.cache/d3hr), shared by every run and
method on the dataset; the recipe key changes when the training recipe does::

    CACHE/teachers/<dataset-key>/<arch>-<recipe-key>.safetensors   weights + metadata (JSON-encoded)
    CACHE/teachers/<dataset-key>/<arch>-<recipe-key>.json          the same metadata, readable: test top-1, epochs

A teacher cached by earlier versions beside the run, in RUN/../.teachers/<dataset-key>/<arch>.safetensors, is still
found and used (the run folder's parent is never written to any more).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d3hr.config import DataConfig
from d3hr.data import load_dataset, load_raw
from d3hr.data.identity import fingerprint
from d3hr.data.images import ImageSet
from d3hr.errors import D3HRError
from d3hr.evaluate.augment import Augment
from d3hr.evaluate.results import file_lock
from d3hr.evaluate.students import create_student
from d3hr.evaluate.train import TrainSetup, train_model
from d3hr.utils.dist import get_world
from d3hr.utils.folders import cache_dir
from d3hr.utils.io import load_tensors, save_tensors, sha256_json, write_json
from d3hr.utils.progress import say

TEACHER_SEED = 0
TEACHER_EPOCHS = {"digits": 30}  # default for datasets not listed: DEFAULT_TEACHER_EPOCHS
DEFAULT_TEACHER_EPOCHS = 20
TEACHER_BATCH = 128
TEACHER_CROP_SCALE = (0.5, 1.0)  # milder than the students' 0.08: the teacher must first fit the real data
NO_FLIP = {"digits", "mnist"}  # mirrored digits are not digits


def flip_default(dataset: str) -> bool:
    """Whether horizontal flips make sense for ``dataset`` (off for handwritten digits)."""
    return dataset not in NO_FLIP


def dataset_key(data: DataConfig, ds: ImageSet) -> str:
    """``<name>-<hash>`` naming one dataset (its training and test images, by content: d3hr.data.identity) at one
    resolution: the teacher cache folder."""
    root = str(Path(data.root).resolve()) if data.root else None
    train = load_raw(replace(data, limit=None), "train")
    ident = {"name": data.name, "root": root, "resolution": ds.resolution, "channels": ds.channels,
             "train": fingerprint(train, data.fingerprint), "test": fingerprint(ds, data.fingerprint)}
    return f"{data.name}-{sha256_json(ident)[:12]}"


def recipe_key() -> str:
    """A short hash of how teachers are trained (seed, batch, crop scale, optimizer defaults): a new recipe trains a
    new teacher instead of reusing one trained otherwise."""
    setup = asdict(TrainSetup(epochs=1, batch_size=TEACHER_BATCH))
    del setup["epochs"]  # a teacher of other epochs is the same recipe: get_teacher reports the mismatch
    return sha256_json({"seed": TEACHER_SEED, "crop_scale": TEACHER_CROP_SCALE, "setup": setup})[:8]


def teacher_path(run_dir: Path, data: DataConfig, test: ImageSet, arch: str, cache: str | Path | None = None) -> Path:
    """Where the teacher of ``arch`` for this dataset is: in the cache ``cache`` (default: $D3HR_CACHE or
    ~/.cache/d3hr), keyed by dataset and recipe; or, when an earlier version left one there, RUN/../.teachers."""
    key = dataset_key(data, test)
    legacy = run_dir.resolve().parent / ".teachers" / key / f"{arch}.safetensors"
    if legacy.is_file():
        return legacy
    root = cache_dir(str(cache) if cache is not None else None)
    return root / "teachers" / key / f"{arch}-{recipe_key()}.safetensors"


def _build(arch: str, num_classes: int, channels: int, resolution: int, device: torch.device) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TEACHER_SEED)
        return create_student(arch, num_classes, channels, resolution).to(device)


def load_teacher(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A cached teacher in eval mode and its metadata."""
    tensors, meta = load_tensors(path)
    model = _build(meta["arch"], meta["num_classes"], meta["channels"], meta["resolution"], torch.device(device))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise D3HRError(f"teacher {path} does not fit architecture '{meta['arch']}': {exc}".splitlines()[0]) from None
    return model.eval(), meta


def get_teacher(run_dir: Path, data: DataConfig, test: ImageSet, arch: str = "convnet", epochs: int | None = None,
                device: torch.device | str = "cpu",
                cache: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The cached teacher for the run's dataset, trained first (on the full training split) if there is none;
    ``cache``: d3hr's cache folder (default $D3HR_CACHE or ~/.cache/d3hr), see ``teacher_path``.

    ``epochs`` None: the cached teacher whatever its epochs, or a new one with the dataset's default. A cached
    teacher trained for other ``epochs`` than asked is an error (it is shared: delete it to retrain).
    """
    path = teacher_path(run_dir, data, test, arch, cache)
    device = torch.device(device)
    train_epochs = epochs or TEACHER_EPOCHS.get(data.name, DEFAULT_TEACHER_EPOCHS)
    world = get_world()
    if world.distributed:  # torchrun: every rank trains it together (DDP), rank 0 writes it
        if not world.broadcast(path.is_file() if world.is_main else None):
            _train_teacher(path, data, test, arch, train_epochs, device)
        world.barrier()
        model, meta = load_teacher(path, device)
    else:
        with file_lock(path.with_name(f".{arch}.lock")):  # one process trains it, the others wait and reuse it
            if not path.is_file():
                _train_teacher(path, data, test, arch, train_epochs, device)
            model, meta = load_teacher(path, device)
    if epochs is not None and meta["epochs"] != epochs:
        raise D3HRError(f"cached teacher {path} was trained for {meta['epochs']} epochs, not {epochs}; "
                        "delete it to retrain (every method is scored against the same teacher)")
    return model, {**meta, "path": str(path)}


def _train_teacher(path: Path, data: DataConfig, test: ImageSet, arch: str, epochs: int, device: torch.device) -> None:
    train = load_dataset(replace(data, limit=None), "train")  # the full training split, whatever the run used
    if train.classes != test.classes:
        raise D3HRError(f"train and test splits of '{data.name}' have different classes")
    say(f"[teacher] training {arch} on {len(train)} {data.name} images for {epochs} epochs -> {path}")
    t0 = time.time()
    model = _build(arch, len(test.classes), test.channels, test.resolution, device)
    setup = TrainSetup(epochs=epochs, batch_size=TEACHER_BATCH)
    aug = Augment(test.resolution, scale=TEACHER_CROP_SCALE, flip=flip_default(data.name), cutmix=False)
    test_pixels = test.load(range(len(test)))
    result = train_model(model, train.load(range(len(train))), torch.as_tensor(train.targets), setup, aug,
                         TEACHER_SEED, test=(test_pixels, torch.as_tensor(test.targets)), desc=f"teacher {arch}")
    meta = {"arch": arch, "dataset": data.name, "dataset_key": dataset_key(data, test), "classes": test.classes,
            "num_classes": len(test.classes), "channels": test.channels, "resolution": test.resolution,
            "epochs": epochs, "seed": TEACHER_SEED, "train_images": len(train), "test_images": len(test),
            "test_top1": result.top1, "batch_size": TEACHER_BATCH, "lr": setup.lr, "weight_decay": setup.weight_decay,
            "crop_scale": list(TEACHER_CROP_SCALE), "flip": aug.flip, "seconds": round(time.time() - t0, 1)}
    if get_world().is_main:
        save_tensors(path, model.state_dict(), meta)
        write_json(path.with_suffix(".json"), meta)
    say(f"[teacher] {arch}: test top-1 {100 * result.top1:.2f}% after {epochs} epochs ({meta['seconds']} s)")
