"""A distilled set packed into what regenerates it (``d3hr pack``): one safetensors file, no pickle.

A D3HR or Base-RS set is determined by the per-class statistics in the inverted domain, the group-sampling seed and
the generator, so the pack holds those and not the images; ``d3hr unpack`` (d3hr.distillation.unpack) regenerates
the images and checks each against its sha256. ``SET.d3hr`` holds (C classes, D = c*h*w latent dimensions, N images):

  form 'statistics' (d3hr, base-rs):
    mean, std    (C, D) float32   x = mean + std * z needs their exact bits (float16 would move every latent)
    skewness     (C, D) float16   d3hr only: the choice alone reads it, and float16 makes the same choice
                                  (tests/distillation/test_pack.py); Base-RS takes candidate 0 and reads none
    index, pool  (C,) int64       the chosen candidate and the pool it was drawn from (group.chosen_candidates)
  form 'latents' (kmeans-latent, base-ddpm, d3hr-herd, any covariance model: not a function of the statistics):
    latents      (C, ipc, c, h, w) float32, count (C,) int64
  form 'images' (random-real, herding: training images):
    image_index  (C, ipc) int64 into the training set (its identity in the metadata), count (C,) int64
  every form:
    label        (C,) int64       the generator's label of each class (methods with a generator)
    image_sha256 (N, 32) uint8    sha256 of every PNG, in class order then name order
    image_thumb  (N, 4, 4) uint8  its box-averaged gray thumbnail: how far an image that differs has moved

and one JSON metadata string: the format and its version, the d3hr version, method, form, ipc, class names,
latent shape, every config value the select and generate stages hash plus the shape sampling needs (CONFIG_FIELDS),
the two stages' keys, the data identity, the generator's identity (sha256 over its weight files, and its path or hub
id as a hint), the thread count and device the images were made with, and the manifest's method details.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d3hr import __version__
from d3hr.config import Config, load_config
from d3hr.distillation.group import chosen_candidates, group_latents
from d3hr.distillation.methods import get_method
from d3hr.errors import D3HRError
from d3hr.runfolder import CONFIG, MANIFEST, POINTER, SELECTION, STATS, RunFolder, listed_images, selection_counts
from d3hr.utils.io import load_tensors, read_json, save_tensors, sha256_file
from d3hr.utils.schema import GENERATOR_POINTER, PACK, check, check_manifest

FORMAT = "d3hr-set"
FORMAT_VERSION = 1
SUFFIX = ".d3hr"
THUMB = 4  # side of the gray thumbnail kept per image
# The config values a pack keeps: what the select and generate stages hash (seed, select.*, generate.save_size,
# diffusion.precision), what sampling needs (grid, level, guidance, batch size: the model's arithmetic depends on
# it), and the data's name and shape (evaluation reads the test split by them).
CONFIG_FIELDS = ("seed", "data.name", "data.root", "data.limit", "data.resolution", "data.channels", "data.image_size",
                 "data.fit", "data.fingerprint", "generator.class_map", "diffusion.num_steps",
                 "diffusion.inversion_steps", "diffusion.guidance_scale", "diffusion.precision", "select.method",
                 "select.ipc", "select.candidates", "select.weights", "select.pools", "select.allow_short_classes",
                 "select.herd_pool", "generate.batch_size", "generate.save_size")


@dataclass(frozen=True)
class Packed:
    """A pack as loaded and checked: its tensors and metadata (see the module notes)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def form(self) -> str:
        return self.meta["form"]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]


def config_value(cfg: Config, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def form_of(selection: dict[str, torch.Tensor]) -> str:
    """What a selection is regenerated from: 'statistics' (a candidate of a seeded pool: index and pool), 'latents'
    (latents that are no function of the statistics) or 'images' (training-image indices only)."""
    if "index" in selection and "pool" in selection:
        return "statistics"
    return "latents" if "latents" in selection else "images"


def image_signature(data: bytes) -> tuple[bytes, np.ndarray]:
    """The sha256 (32 bytes) of an image file's bytes and its THUMB x THUMB box-averaged gray thumbnail (uint8)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        thumb = np.asarray(im.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.uint8)
    return hashlib.sha256(data).digest(), thumb


def signatures(root: Path, rels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """image_sha256 (N, 32) and image_thumb (N, THUMB, THUMB) uint8 of the images RUN/``rels``."""
    sha = torch.zeros(len(rels), 32, dtype=torch.uint8)
    thumbs = torch.zeros(len(rels), THUMB, THUMB, dtype=torch.uint8)
    for i, rel in enumerate(rels):
        digest, thumb = image_signature((root / rel).read_bytes())
        sha[i] = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
        thumbs[i] = torch.from_numpy(thumb.copy())
    return sha, thumbs


def _checked(root: Path, manifest: dict[str, Any], name: str) -> Path:
    """RUN/``name`` if the manifest lists it with its sha256; else a one-line error."""
    path = root / name
    digest = manifest["files"].get(name)
    if digest is None or not path.is_file():
        raise D3HRError(f"cannot pack {root}: {name} is {'missing' if digest else 'not in the manifest'}")
    if sha256_file(path) != digest:
        raise D3HRError(f"cannot pack {root}: {name} differs from its sha256 in the manifest; check the run with "
                        "d3hr verify")
    return path


def _labels(cfg: Config, classes: list[str], generator: str) -> torch.Tensor:
    """The generator's label of each class (C,): the class index, or the run's class map."""
    if cfg.generator.class_map is None:
        return torch.arange(len(classes))
    from d3hr.data.classmap import load_class_map
    from d3hr.generator.model import generator_num_labels

    return torch.as_tensor(load_class_map(cfg.generator.class_map, classes, generator_num_labels(generator)))


def _statistics(root: Path, manifest: dict[str, Any], sel: dict[str, torch.Tensor], sel_meta: dict[str, Any],
                ) -> dict[str, torch.Tensor]:
    """mean, std (float32), skewness (float16, group sampling only), index and pool; refused unless the chosen
    candidates, redrawn from the seeds, give the selected latents bit for bit."""
    stats, _ = load_tensors(_checked(root, manifest, STATS))
    latents = sel["latents"]  # (C, ipc, c, h, w)
    num_classes, ipc = latents.shape[:2]
    z = chosen_candidates(int(sel_meta["seed"]), sel["pool"], sel["index"], ipc, math.prod(latents.shape[2:]))
    x = group_latents(stats["mean"], stats["std"], z)  # (C, ipc, D)
    same = (x == latents.flatten(2)).flatten(1).all(dim=1)
    if not bool(same.all()):
        c = int((~same).nonzero()[0])
        raise D3HRError(f"cannot pack {root}: the latents selected for class '{sel_meta['classes'][c]}' are not "
                        "redrawn from the statistics and seeds (a selection of another d3hr version or device); "
                        "distill the run again")
    out = {"mean": stats["mean"].float(), "std": stats["std"].float(), "index": sel["index"], "pool": sel["pool"]}
    if sel_meta.get("strategy") == "group":
        out["skewness"] = stats["skewness"].half()
    return out


def pack_run(run: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Pack the run folder ``run`` into ``out`` (default RUN.d3hr beside it); returns what was written and its size.

    Every file read is checked against the manifest first; a set that the pack could not regenerate is refused."""
    root = Path(run)
    if not (root / MANIFEST).is_file():
        raise D3HRError(f"{root} has no manifest.json: not a distilled run folder")
    manifest = check_manifest(read_json(root / MANIFEST), root / MANIFEST)
    cfg = load_config(_checked(root, manifest, CONFIG))
    stages = RunFolder(root).state()
    for stage in ("select", "generate"):
        if stage not in stages:
            raise D3HRError(f"cannot pack {root}: stages.json records no {stage} stage; distill the run first")
    spec = get_method(manifest.get("method", cfg.select.method))
    sel, sel_meta = load_tensors(_checked(root, manifest, SELECTION))
    classes = [manifest["classes"][str(c)] for c in range(len(manifest["classes"]))]
    images = listed_images(root, manifest)
    rels = [rel for _, rel, _ in images]
    sha, thumbs = signatures(root, rels)
    for i, (_, rel, digest) in enumerate(images):
        if bytes(sha[i].tolist()).hex() != digest:
            raise D3HRError(f"cannot pack {root}: {rel} differs from its sha256 in the manifest; check the run with "
                            "d3hr verify")
    form = form_of(sel) if "covariance" not in sel_meta else "latents"  # x = mu + L z: kept as latents
    tensors = {"image_sha256": sha, "image_thumb": thumbs}
    if form == "statistics":
        tensors |= _statistics(root, manifest, sel, sel_meta)
    else:
        tensors["count"] = selection_counts(sel, cfg.select.ipc)
        tensors |= {"latents": sel["latents"].float()} if form == "latents" else {"image_index": sel["image_index"]}
    generator = None
    if spec.needs_generator:
        from d3hr.generator.model import generator_sha256

        pointer = check(read_json(_checked(root, manifest, POINTER)), GENERATOR_POINTER, root / POINTER)
        generator = {"sha256": generator_sha256(pointer["path"]), "hint": pointer["path"]}
        tensors["label"] = _labels(cfg, classes, pointer["path"])
    made = stages["generate"]
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "d3hr": __version__, "method": spec.name,
            "form": form, "ipc": cfg.select.ipc, "classes": classes,
            "latent_shape": list(sel["latents"].shape[2:]) if "latents" in sel else None,
            "strategy": sel_meta.get("strategy"), "config": _config_values(cfg, stages),
            "keys": {"select": stages["select"]["key"], "generate": made["key"]},
            "dataset": manifest.get("dataset") or {}, "generator": generator,
            "generation": {k: made.get(k) for k in ("threads", "device", "processes", "kernels")},
            "method_details": manifest.get("method_details", {}), "short_classes": manifest.get("short_classes", {})}
    check(meta, PACK, "the pack")
    path = Path(out) if out is not None else root.parent / f"{root.name}{SUFFIX}"
    save_tensors(path, tensors, meta)
    return {"pack": str(path), "bytes": path.stat().st_size, "form": form, "method": spec.name,
            "images": len(rels), "png_bytes": sum((root / rel).stat().st_size for rel in rels)}


def _config_values(cfg: Config, stages: dict[str, Any]) -> dict[str, Any]:
    """CONFIG_FIELDS of the run; K=auto as the level its invert stage chose (what sampling walks from)."""
    values = {f: config_value(cfg, f) for f in CONFIG_FIELDS}
    if values["diffusion.inversion_steps"] == "auto":
        values["diffusion.inversion_steps"] = int(stages["invert"]["inversion_steps"])
    return values


def _fail(path: Path, what: str) -> D3HRError:
    return D3HRError(f"{path}: {what}; it was not written by d3hr pack or was changed since")


def _expected(meta: dict[str, Any], counts: torch.Tensor | None) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The shape and dtype of every tensor the pack's form needs."""
    num_classes, ipc, form = len(meta["classes"]), meta["ipc"], meta["form"]
    latent = tuple(meta.get("latent_shape") or ())
    dim = math.prod(latent)
    n = num_classes * ipc if counts is None else int(counts.sum())
    out = {"image_sha256": ((n, 32), torch.uint8), "image_thumb": ((n, THUMB, THUMB), torch.uint8)}
    if form == "statistics":
        out |= {"mean": ((num_classes, dim), torch.float32), "std": ((num_classes, dim), torch.float32),
                "index": ((num_classes,), torch.int64), "pool": ((num_classes,), torch.int64)}
        if meta.get("strategy") == "group":
            out["skewness"] = ((num_classes, dim), torch.float16)
    elif form == "latents":
        out["latents"] = ((num_classes, ipc, *latent), torch.float32)
    else:
        out["image_index"] = ((num_classes, ipc), torch.int64)
    if meta["generator"] is not None:
        out["label"] = ((num_classes,), torch.int64)
    return out


def load_pack(path: str | Path) -> Packed:
    """Read and check a pack: its format and version, the metadata's fields and every tensor's shape, dtype and
    range; anything else is a one-line D3HRError naming the file."""
    path = Path(path)
    tensors, meta = load_tensors(path)  # a truncated or corrupt file is a one-line error there
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise D3HRError(f"{path} is not a d3hr pack (its metadata has no format '{FORMAT}')")
    if meta.get("format_version") != FORMAT_VERSION:
        raise D3HRError(f"{path}: pack format version {meta.get('format_version')!r} is unknown to d3hr "
                        f"{__version__}, which reads version {FORMAT_VERSION}; use the d3hr that wrote it")
    check(meta, PACK, path)
    num_classes, ipc = len(meta["classes"]), meta["ipc"]
    if num_classes == 0 or ipc < 1:
        raise _fail(path, f"{num_classes} classes and ipc {ipc}")
    if meta["form"] != "images" and not meta.get("latent_shape"):
        raise _fail(path, f"form '{meta['form']}' without a latent shape")
    counts = None
    if meta["form"] != "statistics":
        counts = tensors.get("count")
        if counts is None or tuple(counts.shape) != (num_classes,) or counts.dtype != torch.int64:
            raise _fail(path, f"tensor 'count' must be ({num_classes},) int64")
        if bool(((counts < 0) | (counts > ipc)).any()):
            raise _fail(path, f"tensor 'count' holds values outside 0..{ipc}")
    for name, (shape, dtype) in _expected(meta, counts).items():
        t = tensors.get(name)
        if t is None:
            raise _fail(path, f"the tensor '{name}' is missing")
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise _fail(path, f"tensor '{name}' is {tuple(t.shape)} {t.dtype}, expected {shape} {dtype}")
    if meta["form"] == "statistics":
        last = meta["config"].get("select.candidates", 1) if meta.get("strategy") == "group" else 1
        if bool(((tensors["index"] < 0) | (tensors["index"] >= last)).any()):
            raise _fail(path, f"tensor 'index' holds candidates outside 0..{last - 1}")
        if bool(((tensors["pool"] < 0) | (tensors["pool"] >= num_classes)).any()):
            raise _fail(path, f"tensor 'pool' holds pools outside 0..{num_classes - 1}")
    return Packed(path, tensors, meta)
