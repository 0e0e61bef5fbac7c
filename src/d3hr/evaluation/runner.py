"""``evaluate``: train students on a run's images, score them on the real test split, accumulate RUN/eval/results.json.

results.json holds ``records`` (one per student, label mode, teacher, epochs, seed, image set and training setup:
final-epoch top-1 on the full test split), ``summary`` (mean and sample std over the seeds of each group) and
``teachers`` (the cached teachers used, with their own test top-1). A record already there is not retrained.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d3hr.config import Config, load_config
from d3hr.data import load_dataset
from d3hr.data.images import ImageSet
from d3hr.errors import D3HRError
from d3hr.evaluation.recipes import DEFAULT_RECIPE, FULL_RECIPE, get_recipe, without_augmentation
from d3hr.evaluation.results import append_record, read_results, record_key, summarise
from d3hr.evaluation.students import check_student, create_student
from d3hr.evaluation.teacher import flip_default, get_teacher
from d3hr.evaluation.train import channel_stats, train_model
from d3hr.runfolder import IMAGES, MANIFEST, listed_images
from d3hr.utils.dist import check_device, get_world, kernels, rank_device
from d3hr.utils.folders import cache_dir, owns, writable_cache
from d3hr.utils.io import read_json, sha256_file
from d3hr.utils.progress import say
from d3hr.utils.schema import check_manifest
from d3hr.utils.seeding import derive_seed

LABELS = ("soft", "hard")


def evaluate(run_dir: str | Path, student: str = "convnet", labels: str | None = None, seeds: int | Sequence[int] = 3,
             epochs: int | None = None, device: str = "cpu", teacher: str | None = None,
             teacher_epochs: int | None = None, recipe: str | None = None, augment: bool = True, full: bool = False,
             best_of_last: int = 0, **overrides: Any) -> dict[str, Any]:
    """Train ``student`` on RUN/images for each seed and append its final-epoch test top-1 to RUN/eval/results.json.

    ``recipe``: a named training recipe (d3hr.evaluation.recipes); default 'rded' for soft labels, 'dc' for hard
    labels (``full``: 'dc-full'). ``epochs`` and ``overrides`` (batch_size, lr, weight_decay, temperature, flip,
    precision) replace the recipe's values; ``augment=False`` trains without augmentation (DD-Ranking's ARS).
    ``labels``: 'soft' (KL to the teacher) or 'hard' (cross-entropy); it must match the recipe's (None: the
    recipe's; soft without a recipe).
    ``seeds``: a count (seeds 0..n-1) or the seeds; seed s fixes the student's init, data order and augmentation.
    ``teacher``: architecture of the soft-label teacher (default 'convnet'), cached and identified by its weights.
    ``full``: train on the whole real training split instead of RUN/images (the upper bound). ``best_of_last`` > 0
    also records the best top-1 over the last that many epochs (the authors' number; labelled as such). Returns the
    records of these seeds, their summary, the teacher used and how many records were trained or skipped.
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    check_device(str(device))
    world = get_world(str(device))  # torchrun: students and teacher train with DDP, rank 0 writes the records
    device = rank_device(str(device), world)
    if labels not in (None, *LABELS):
        raise D3HRError(f"labels must be soft or hard, got {labels!r}")
    rcp = get_recipe(recipe or (FULL_RECIPE if full else DEFAULT_RECIPE[labels or "soft"]), epochs=epochs, **overrides)
    labels = labels or rcp.labels
    rcp = rcp if augment else without_augmentation(rcp)
    _check_args(labels, rcp.labels, seed_list, best_of_last, rcp.epochs)
    teacher = (teacher or "convnet") if labels == "soft" else None
    for arch in (student, teacher):
        if arch is not None:
            check_student(arch)
    root = Path(run_dir)
    cfg, test, manifest = open_run(root, need_manifest=not full)
    rcp = rcp.resolve(flip_default(cfg.data.name))
    images, targets, digest = read_full_train(cfg) if full else read_run_images(root, test, manifest)
    norm = channel_stats(read_full_train(cfg)[0] if not full else images) if rcp.normalize == "standardize" else None
    setup = rcp.settings()
    if norm is not None:
        setup.update(input_mean=[round(v, 6) for v in norm[0].tolist()],
                     input_std=[round(v, 6) for v in norm[1].tolist()])
    teacher_model, teacher_info = None, None
    if teacher is not None:
        cache = cache_dir(cfg.generator.cache_dir)
        writable_cache(cache)
        teacher_model, teacher_info = get_teacher(cfg.data, test, teacher, teacher_epochs, device, cache)
    base = {"student": student, "labels": labels, "teacher": teacher,
            "teacher_sha256": teacher_info["sha256"] if teacher_info else None, "recipe": rcp.name,
            "epochs": rcp.epochs, "images_sha256": digest, "setup": setup}
    results_path = root / "eval" / "results.json"
    previous = read_results(results_path)
    done = {record_key(r): r for r in previous["records"]}
    todo = [s for s in seed_list if record_key({**base, "seed": s}) not in done]
    test_pixels, test_targets = test.load(range(len(test))), torch.as_tensor(test.targets)
    run_info = {"dataset": cfg.data.name, "classes": test.classes, "method": "full" if full else manifest.get("method"),
                "ipc": None if full else manifest.get("ipc")}
    records = []
    for s in seed_list:
        key = record_key({**base, "seed": s})
        tag = f"{student} {rcp.name} {rcp.epochs} epochs seed {s}"
        if s not in todo:
            say(f"[evaluate] {tag}: already in {results_path}, skipped")
            records.append(done[key])
            continue
        t0 = time.time()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(s, "student-init"))
            model = create_student(student, len(test.classes), test.channels, test.resolution).to(device)
        ckpt = root / "eval" / "checkpoints" / f"{key[:16]}.safetensors"
        result = train_model(model, images, targets, rcp, s, teacher=teacher_model, test=(test_pixels, test_targets),
                             track_last=best_of_last, desc=tag, norm=norm, checkpoint=ckpt)
        rec = {**base, "seed": s, "top1": result.top1, "train_images": len(images), "test_images": len(test),
               "final_loss": result.losses[-1], "device": str(device), "kernels": kernels(device),
               "processes": world.size, "seconds": round(time.time() - t0, 1),
               "generator_sha256": generator_weights(manifest),
               "selection_teacher_sha256": (manifest.get("method_details") or {}).get("teacher_sha256")}
        if best_of_last:
            rec[f"top1_best_of_last_{best_of_last}_epochs"] = max(result.last_top1)
        say(f"[evaluate] {tag}: top-1 {100 * result.top1:.2f}%")
        if world.is_main:
            append_record(results_path, rec, run_info, teacher_info)
            ckpt.unlink(missing_ok=True)
        records.append(rec)
    summary = summarise(records)[0]
    return {"results": str(results_path), "teacher": teacher_info, "recipe": rcp.settings(), "records": records,
            "summary": summary, "trained": len(todo), "skipped": len(seed_list) - len(todo)}


def _check_args(labels: str, recipe_labels: str, seeds: list[int], best_of_last: int, epochs: int) -> None:
    checks = [
        (labels == recipe_labels, f"labels {labels!r} do not match the recipe's ({recipe_labels!r})"),
        (len(seeds) >= 1, "seeds must name at least one seed"),
        (len(set(seeds)) == len(seeds), f"seeds must be distinct, got {seeds}"),
        (0 <= best_of_last <= epochs, f"best_of_last must be in [0, epochs={epochs}], got {best_of_last}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise D3HRError(msg)


def read_full_train(cfg: Config) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The whole real training split (whatever ``data.limit`` the run used): (N, C, H, W) uint8, (N,) targets and
    a sha256 over pixels and targets."""
    train = load_dataset(replace(cfg.data, limit=None), "train")
    images, targets = train.load(range(len(train))), torch.as_tensor(train.targets)
    h = hashlib.sha256(images.numpy().tobytes())
    h.update(targets.numpy().astype(np.int64).tobytes())
    return images, targets, h.hexdigest()


def generator_weights(manifest: dict[str, Any]) -> str | None:
    """The sha256 of the generator weights that made the run's images (recorded by the generator stage); None for
    real-image methods and for runs of versions before it was recorded. Not part of a record's key."""
    stage = (manifest.get("stages") or {}).get("generator") or {}
    return stage.get("sha256")


def open_run(root: Path, need_manifest: bool = True) -> tuple[Config, ImageSet, dict[str, Any]]:
    """The run's config, the real test split of its dataset and its manifest (checked; {} when ``need_manifest`` is
    False and there is none: the upper bound trains on the training split, not on a distilled set).

    Evaluation happens at the side the images were saved at: ``cfg.data.resolution`` is set to
    ``generate.save_size`` when the run gave one, so that the test split, the teacher and the students agree.
    """
    if not (root / "config.yaml").is_file() or not owns(root, "run"):
        raise D3HRError(f"{root} is not a run folder (no config.yaml, or not written by d3hr)")
    has_manifest = (root / "manifest.json").is_file()
    if need_manifest and not has_manifest:
        raise D3HRError(f"{root} has no manifest.json: distill the run first")
    cfg = load_config(root / "config.yaml")
    cfg.data.resolution = cfg.generate.save_size or cfg.data.resolution
    manifest = check_manifest(read_json(root / "manifest.json"), root / "manifest.json") if has_manifest else {}
    return cfg, load_dataset(cfg.data, "test"), manifest


def read_run_images(root: Path, test: ImageSet, manifest: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Exactly the images the manifest lists under RUN/images/<class folder>/, in class order then name order:
    (N, C, H, W) uint8 at the dataset's resolution and channels, (N,) class indices, and a sha256 over the files
    (names and bytes) that keys the records.

    A listed image that is missing or whose sha256 differs from the manifest is a one-line error (the hashes are
    computed for the key anyway); files the manifest does not list are left out (``d3hr verify`` reports them)."""
    folder, manifest_path = root / IMAGES, root / MANIFEST
    if not folder.is_dir():
        raise D3HRError(f"{folder} does not exist: distill the run first")
    classes = [manifest["classes"][str(c)] for c in range(len(manifest["classes"]))]
    if classes != test.classes:
        raise D3HRError(f"{manifest_path} lists other classes than dataset '{test.name}'")
    images = listed_images(root, manifest)
    if len({c for c, _, _ in images}) != len(test.classes):
        raise D3HRError(f"{manifest_path} lists {len({c for c, _, _ in images})} class folders but dataset "
                        f"'{test.name}' has {len(test.classes)} classes")
    h = hashlib.sha256()
    for _, rel, digest in images:
        path = root / rel
        if not path.is_file():
            raise D3HRError(f"{path} is listed in {manifest_path} but missing; check the run with d3hr verify")
        if sha256_file(path) != digest:
            raise D3HRError(f"{path} differs from its sha256 in {manifest_path}; check the run with d3hr verify")
        h.update(f"{Path(rel).relative_to(IMAGES).as_posix()}:{digest}\n".encode())
    files = [root / rel for _, rel, _ in images]
    targets = [c for c, _, _ in images]
    unlisted = sum(1 for p in folder.rglob("*") if p.is_file()) - len(files)
    if unlisted > 0:
        say(f"[evaluate] {unlisted} file(s) under {folder} are not in the manifest and are left out (d3hr verify "
            "lists them)")
    ds = ImageSet("run", test.classes, np.asarray(targets, dtype=np.int64), test.channels, test.resolution,
                  files=files)
    return ds.load(range(len(ds))), torch.as_tensor(ds.targets), h.hexdigest()
