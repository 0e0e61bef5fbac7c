"""Regenerating a packed set (``d3hr unpack``) into an ordinary run folder, every image checked against its sha256.

The chosen candidates are redrawn from their draw blocks (d3hr.distillation.group.chosen_candidates) and turned into
latents by the expression selection used, so they have the same bits; the generate stage then samples and decodes
them as ``d3hr generate`` does (under torchrun class c on rank c mod K), at the packed batch size. The images are
byte-identical to the packed ones with the same generator, thread count and device; otherwise the report says which
differ and by how much. Packs of training images (random-real, herding) read those images from the dataset, whose
identity must match; packs of latents (kmeans-latent, base-ddpm) decode the packed latents.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from d3hr.config import Config, load_config, nest
from d3hr.distillation import generate, generator_stage, select
from d3hr.distillation.context import Context, KnownData
from d3hr.distillation.group import DRAWS, chosen_candidates, group_latents, select_groups
from d3hr.distillation.pack import Packed, load_pack, signatures
from d3hr.distillation.pipeline import Run
from d3hr.errors import D3HRError
from d3hr.runfolder import MANIFEST, SELECTION, listed_images
from d3hr.utils.dist import kernels
from d3hr.utils.io import read_json, save_tensors, sha256_json
from d3hr.utils.progress import say
from d3hr.utils.schema import check_manifest


class ImagesDiffer(D3HRError):
    """Regenerated images differ from their packed sha256; ``report`` lists them (the run folder is written)."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def packed_config(packed: Packed, out: str | Path, generator: str | None, device: str,
                  root: str | None) -> Config:
    """The run's config from the packed values; the generator given (default: the packed hint), the data's root
    given (default: the packed one; read only for packs of training images)."""
    items = [nest(k, v) for k, v in packed.meta["config"].items()]
    cfg = load_config(None, items)
    cfg.out, cfg.device = str(out), device
    packed_gen = packed.meta["generator"]
    if packed_gen is not None:
        hint = packed_gen["hint"]
        if generator is None and Path(hint).is_absolute() and not Path(hint).is_dir():
            raise D3HRError(f"{packed.path} was made with the generator {hint}, which is not here; pass --generator "
                            f"with that generator (weights sha256 {packed_gen['sha256']})")
        cfg.generator.path = generator or hint
    if root is not None:
        cfg.data.root = root
    return cfg


def check_choice(packed: Packed, chunk: int = 1024) -> list[str]:
    """Redo group sampling from the packed statistics (skewness as packed, in float16): the classes whose choice
    differs from the packed index (none for a sound pack). Costs what the select stage costs."""
    if packed.form != "statistics" or packed.meta.get("strategy") != "group":
        return []
    t, c = packed.tensors, packed.meta["config"]
    sel = select_groups(t["mean"], t["std"], t["skewness"], packed.meta["ipc"], c["select.candidates"],
                        tuple(c["select.weights"]), c["seed"], c["select.pools"], chunk)
    return [packed.classes[i] for i in (sel.index != t["index"]).nonzero().flatten().tolist()]


def selection(packed: Packed, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """RUN/selection.safetensors from the pack: redrawn latents (C, ipc, c, h, w), or the packed latents or image
    indices with the count per class."""
    m, t, c = packed.meta, packed.tensors, packed.meta["config"]
    meta = {"key": key, "classes": packed.classes, "method": m["method"], "ipc": m["ipc"],
            "short_classes": m["short_classes"], "seed": c["seed"], "unpacked_from": packed.path.name}
    if packed.form == "statistics":
        latent, ipc = tuple(m["latent_shape"]), m["ipc"]
        z = chosen_candidates(c["seed"], t["pool"], t["index"], ipc, math.prod(latent))  # (C, ipc, D)
        x = group_latents(t["mean"], t["std"], z).reshape(len(packed.classes), ipc, *latent)
        return ({"latents": x, "index": t["index"], "pool": t["pool"]},
                meta | {"strategy": m["strategy"], "candidates": c["select.candidates"],
                        "weights": c["select.weights"], "pools": c["select.pools"], "draws": DRAWS})
    name = "latents" if packed.form == "latents" else "image_index"
    return {"count": t["count"], name: t[name]}, meta | {"details": m["method_details"]}


def _identity(ctx: Context, packed: Packed, force: bool) -> str | None:
    """None when the generator (for training images: the data) is the one packed; else its sha256, after saying
    that the images will differ (``force``) or refusing with one line naming both hashes."""
    packed_gen = packed.meta["generator"]
    if packed_gen is not None:
        from d3hr.generator.model import generator_sha256

        path = ctx.cfg.generator.path
        here = ctx.world.broadcast(generator_sha256(path) if ctx.world.is_main else None)
        if here == packed_gen["sha256"]:
            return None
        what = (f"generator {path} (sha256 {here}) is not the one {packed.path} was packed with (sha256 "
                f"{packed_gen['sha256']}, {packed_gen['hint']})")
    else:
        here, packed_data = ctx.data_identity()["sha256"], packed.meta["dataset"].get("sha256")
        if here == packed_data:
            return None
        what = (f"dataset '{ctx.cfg.data.name}' (identity {here}) is not the one {packed.path} was packed with "
                f"({packed_data})")
    if not force:
        raise D3HRError(f"{what}; pass --force to regenerate with it anyway")
    say(f"[unpack] --force: {what}: the images will differ from the packed ones")
    return here


def compare_images(root: Path, packed: Packed) -> dict[str, Any]:
    """Each image the run's manifest lists against the packed sha256 and thumbnail, in the same order."""
    manifest = check_manifest(read_json(root / MANIFEST), root / MANIFEST)
    rels = [rel for _, rel, _ in listed_images(root, manifest)]
    want_sha, want_thumb = packed.tensors["image_sha256"], packed.tensors["image_thumb"]
    if len(rels) != len(want_sha):
        raise D3HRError(f"{root} lists {len(rels)} images but {packed.path} has {len(want_sha)}")
    sha, thumbs = signatures(root, rels)
    same = (sha == want_sha).all(dim=1)  # (N,)
    moved = (thumbs.int() - want_thumb.int()).abs().flatten(1).max(dim=1).values  # (N,) gray levels
    differ = [{"image": rels[i], "thumbnail_max_diff": int(moved[i])} for i in (~same).nonzero().flatten().tolist()]
    return {"images": len(rels), "identical": int(same.sum()), "differ": differ}


def _differ_message(packed: Packed, report: dict[str, Any]) -> str:
    """One line: how many images differ, by how much, the first few, and the likely cause."""
    d = report["differ"]
    shown = ", ".join(f"{x['image']} ({x['thumbnail_max_diff']})" for x in d[:3])
    shown += f" and {len(d) - 3} more" if len(d) > 3 else ""
    made, here = packed.meta["generation"], report["generation"]
    if made.get("kernels") is not None and made["kernels"] != here["kernels"]:
        cause = (f"the packed images were made with {made['kernels']} kernels, these with {here['kernels']}: "
                 "another instruction set rounds differently")
    elif made.get("threads") is not None and (made["threads"], made["device"]) != (here["threads"], here["device"]):
        cause = (f"the packed images were made with {made['threads']} thread(s) on {made['device']}, these with "
                 f"{here['threads']} on {here['device']}: byte-identical images need the same")
    else:
        cause = "the generator matches its packed sha256, so the pack or the software changed since"
    return (f"{packed.path}: {len(d)} of {report['images']} regenerated images differ from their packed sha256 "
            f"(4x4 gray thumbnails up to {max(x['thumbnail_max_diff'] for x in d)} levels apart: {shown}); "
            f"{cause}; {report['run']} holds the regenerated images")


def unpack_set(path: str | Path, out: str | Path, generator: str | None = None, force: bool = False,
               device: str = "cpu", root: str | None = None, verify_choice: bool = False) -> dict[str, Any]:
    """Regenerate the packed set ``path`` into the run folder ``out``; returns the report (images, identical,
    differ, ...). Refuses another generator (or dataset) unless ``force``; raises ImagesDiffer when images differ
    from the pack without ``force`` having said they would. ``verify_choice`` first redoes the choice from the packed
    statistics (see ``check_choice``)."""
    packed = load_pack(path)
    cfg = packed_config(packed, out, generator, device, root)
    known = None
    if packed.form != "images":
        labels = packed.tensors["label"].tolist() if "label" in packed.tensors else list(range(len(packed.classes)))
        known = KnownData(packed.classes, labels, packed.meta["dataset"])
    run = Run(cfg, known=known)
    ctx = run.ctx
    if verify_choice:
        wrong = ctx.world.broadcast(check_choice(packed) if ctx.world.is_main else None)
        if wrong:
            raise D3HRError(f"{packed.path}: the packed statistics choose other candidates than the packed index for "
                            f"class(es) {', '.join(wrong)}")
        say(f"[unpack] the packed statistics make the packed choice for all {len(packed.classes)} classes")
    other = _identity(ctx, packed, force)
    key = packed.meta["keys"]["select"]
    if other is not None:  # another generator or dataset: other images, so other keys
        key = sha256_json({"packed": key, "with": other})
    t0 = time.time()
    with run.locked():
        if ctx.spec.needs_generator:
            generator_stage.run(ctx, None)
        if ctx.world.is_main:
            tensors, meta = selection(packed, key)
            save_tensors(ctx.root / SELECTION, tensors, meta)
            ctx.record(select.NAME, key, time.time() - t0, short_classes=packed.meta["short_classes"],
                       details=packed.meta["method_details"], unpacked_from=str(packed.path))
        ctx.world.barrier()
        generate.run(ctx, key)
        run.write_manifest()
    report = ctx.world.broadcast(compare_images(ctx.root, packed) if ctx.world.is_main else None)
    report |= {"run": str(ctx.root), "pack": str(packed.path), "method": packed.meta["method"],
               "seconds": round(time.time() - t0, 2), "forced": other is not None,
               "generation": {"threads": torch.get_num_threads(), "device": str(ctx.device),
                              "kernels": kernels(ctx.device)}}
    if report["differ"] and other is None:
        raise ImagesDiffer(_differ_message(packed, report), report)
    return report
