"""The teacher that gives soft labels (and herding's features): trained once per dataset on the full training set
under the ``teacher`` recipe (d3hr.evaluation.recipes), cached, identified by a sha256 of its weights, shared by every
method evaluated beside it.

Cache layout, in d3hr's cache (generator.cache_dir, else $D3HR_CACHE, else ~/.cache/d3hr), shared by every run and
method on the dataset (whose key hashes the content of its training and test images)::

    CACHE/teachers/<dataset-key>/<arch>-<recipe-key>-<epochs>ep.safetensors   weights + metadata (JSON-encoded)
    CACHE/teachers/<dataset-key>/<arch>-<recipe-key>-<epochs>ep.json          the same metadata, readable
    CACHE/teachers/<dataset-key>/.<arch>-<recipe-key>-<epochs>ep.partial.safetensors   training state, per epoch

``<recipe-key>`` hashes every setting of the recipe but its epochs; the metadata's ``sha256`` hashes the weights.
A run folder never writes outside itself (earlier versions kept teachers in RUN/../.teachers/, of another recipe).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d3hr.config import DataConfig
from d3hr.data import load_dataset, load_raw
from d3hr.data.identity import fingerprint
from d3hr.data.images import ImageSet
from d3hr.errors import D3HRError
from d3hr.evaluation.recipes import TEACHER_RECIPE, Recipe, get_recipe
from d3hr.evaluation.results import file_lock
from d3hr.evaluation.students import create_student
from d3hr.evaluation.train import train_model
from d3hr.utils.dist import get_world, kernels
from d3hr.utils.folders import cache_dir
from d3hr.utils.io import load_tensors, save_tensors, sha256_json, write_json
from d3hr.utils.progress import say

TEACHER_SEED = 0
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


def teacher_dir(data: DataConfig, test: ImageSet, cache: str | Path | None = None) -> Path:
    """Where this dataset's teachers are cached: ``CACHE/teachers/<dataset-key>`` (``cache`` default: $D3HR_CACHE
    or ~/.cache/d3hr)."""
    return cache_dir(str(cache) if cache is not None else None) / "teachers" / dataset_key(data, test)


def recipe_key(recipe: Recipe) -> str:
    """12 hex digits over every setting of ``recipe`` except its epochs (which the file name carries)."""
    return sha256_json({k: v for k, v in recipe.settings().items() if k != "epochs"})[:12]


def teacher_path(folder: Path, arch: str, recipe: Recipe) -> Path:
    """The cache file of the ``arch`` teacher trained under ``recipe`` (resolved for the dataset) in the dataset's
    ``folder`` (``teacher_dir``)."""
    return folder / f"{arch}-{recipe_key(recipe)}-{recipe.epochs}ep.safetensors"


def teacher_recipe(folder: Path, data: DataConfig, arch: str, epochs: int | None = None) -> Recipe:
    """The ``teacher`` recipe for this dataset with ``epochs``; None: the most epochs of a teacher already cached
    under it in ``folder`` (``teacher_dir``), else the recipe's own."""
    base = get_recipe(TEACHER_RECIPE).resolve(flip_default(data.name))
    if epochs is None:
        stem = f"{arch}-{recipe_key(base)}-"
        cached = [int(m.group(1)) for p in folder.glob(f"{stem}*ep.safetensors")
                  if (m := re.fullmatch(re.escape(stem) + r"(\d+)ep", p.stem))]
        epochs = max(cached, default=base.epochs)
    return replace(base, epochs=epochs)


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a model's state, in key order: the teacher's identity."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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


def get_teacher(data: DataConfig, test: ImageSet, arch: str = "convnet", epochs: int | None = None,
                device: torch.device | str = "cpu",
                cache: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The cached teacher for the run's dataset, trained first (on the full training split, resuming an interrupted
    training) if there is none; ``cache``: d3hr's cache folder (see ``teacher_dir``). Its metadata carries
    ``sha256`` (of the weights) and the recipe's settings.

    ``epochs`` None: the cached teacher of the ``teacher`` recipe with the most epochs, or a new one with the
    recipe's epochs; else the teacher of exactly that many epochs.
    """
    folder = teacher_dir(data, test, cache)  # fingerprints the train and test images: once per call
    recipe = teacher_recipe(folder, data, arch, epochs)
    path = teacher_path(folder, arch, recipe)
    device = torch.device(device)
    world = get_world()
    if world.distributed:  # torchrun: every rank trains it together (DDP), rank 0 writes it
        if not world.broadcast(path.is_file() if world.is_main else None):
            _train_teacher(path, data, test, arch, recipe, device)
        world.barrier()
        model, meta = load_teacher(path, device)
    else:
        with file_lock(path.with_name(f".{path.stem}.lock")):  # one process trains it, the others wait and reuse it
            if not path.is_file():
                _train_teacher(path, data, test, arch, recipe, device)
            model, meta = load_teacher(path, device)
    return model, {**meta, "path": str(path)}


def _train_teacher(path: Path, data: DataConfig, test: ImageSet, arch: str, recipe: Recipe,
                   device: torch.device) -> None:
    train = load_dataset(replace(data, limit=None), "train")  # the full training split, whatever the run used
    if train.classes != test.classes:
        raise D3HRError(f"train and test splits of '{data.name}' have different classes")
    partial = path.with_name(f".{path.stem}.partial.safetensors")
    resumed = " (resuming)" if partial.is_file() else ""
    say(f"[teacher] training {arch} on {len(train)} {data.name} images for {recipe.epochs} epochs{resumed} -> {path}")
    t0 = time.time()
    model = _build(arch, len(test.classes), test.channels, test.resolution, device)
    test_pixels = test.load(range(len(test)))
    result = train_model(model, train.load(range(len(train))), torch.as_tensor(train.targets), recipe, TEACHER_SEED,
                         test=(test_pixels, torch.as_tensor(test.targets)), desc=f"teacher {arch}",
                         checkpoint=partial, checkpoint_seconds=0.0)
    meta = {"arch": arch, "dataset": data.name, "dataset_key": path.parent.name, "classes": test.classes,
            "num_classes": len(test.classes), "channels": test.channels, "resolution": test.resolution,
            "epochs": recipe.epochs, "seed": TEACHER_SEED, "train_images": len(train), "test_images": len(test),
            "test_top1": result.top1, "recipe": recipe.name, "setup": recipe.settings(),
            "sha256": weights_sha256(model), "seconds": round(time.time() - t0, 1), "kernels": kernels(device)}
    if get_world().is_main:
        save_tensors(path, model.state_dict(), meta)
        write_json(path.with_suffix(".json"), meta)
        partial.unlink(missing_ok=True)
    say(f"[teacher] {arch}: test top-1 {100 * result.top1:.2f}% after {recipe.epochs} epochs ({meta['seconds']} s)")
