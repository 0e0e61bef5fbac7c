"""The select stage and the built-in methods: D3HR's group sampling, Base-RS, four baselines, and d3hr-herd.

Each method is one function registered with ``@register_method`` (d3hr.distillation.methods). D3HR and Base-RS pick
latents from the per-class statistics of the invert stage (level K); random-real and herding pick real training
images (no generator); kmeans-latent decodes k-means centroids of VAE latents (level 0) and base-ddpm noises real
latents forward to level K (the paper's Base-DDPM ablation); d3hr-herd (this project's, not the paper's) generates a
group-sampled pool and keeps the members a teacher sees closest to the real class. Every method writes
RUN/selection.safetensors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d3hr.diffusion import forward_noise
from d3hr.distillation.baselines import (
    KMEANS_INIT,
    herding_indices,
    kmeans_centroids,
    penultimate_features,
    random_subset,
)
from d3hr.distillation.context import Context, short_classes
from d3hr.distillation.covariance import read_root
from d3hr.distillation.generate import render
from d3hr.distillation.group import DRAWS, select_groups
from d3hr.distillation.methods import register_method
from d3hr.errors import D3HRError
from d3hr.runfolder import SELECTION, STATS
from d3hr.utils.io import load_tensors, save_tensors, sha256_json
from d3hr.utils.progress import progress, say
from d3hr.utils.seeding import derive_seed, generator_for

NAME = "select"
HERDING_TEACHER = "convnet"  # the teacher (d3hr.evaluation.teacher) whose penultimate features herding uses
RANDOM_DRAW = "uniform without replacement: torch.randperm seeded by sha256('seed:random-real:c')"
_SELECT = ("select.ipc", "select.allow_short_classes")


def applies(ctx: Context) -> bool:
    return True


def _field(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def stage_key(ctx: Context, previous: str | None) -> str:
    """The method, the key of the stage before (the data's identity when none ran) and the method's key fields."""
    fields = {f: _field(ctx.cfg, f) for f in ctx.spec.key_fields}
    inputs = ctx.spec.key_inputs(ctx) if ctx.spec.key_inputs is not None else None
    return sha256_json({"method": ctx.method, "previous": previous or ctx.data_identity(), "fields": fields,
                        **({"inputs": inputs} if inputs is not None else {})})


def run(ctx: Context, previous: str | None) -> str:
    """Write RUN/selection.safetensors with the method's selection (skipped when unchanged); returns its key."""
    ctx.check_data()
    key = stage_key(ctx, previous)
    out = ctx.root / SELECTION
    if ctx.unchanged(NAME, key, SELECTION):
        return key
    t0 = time.time()
    details = ctx.spec.select(ctx, out, key)  # every rank calls it: group sampling shards pools over them
    if ctx.world.is_main:
        ctx.record(NAME, key, time.time() - t0, **details)
    ctx.world.barrier()
    return key


# ----- group sampling in the inverted domain ---------------------------------------------------------------------
def _draw(ctx: Context, strategy: str, ipc: int) -> tuple[Any, dict[str, Any], dict[str, Any]] | None:
    """Group sampling (or one random group) of ``ipc`` latents per class from RUN/stats.safetensors, gathered on
    the main process (None elsewhere): the selection (``x`` (C, ipc, D) in latent coordinates), the statistics'
    metadata (with ``short_classes``) and what a covariance model adds to the record (empty for diag).

    With a covariance model (stats.covariance full or lowrank:R, d3hr.distillation.covariance) the candidates z are
    scored in the whitened coordinates, against mean 0, std 1 and the class's ``skewness_white``, and the chosen
    group is x = mu + L z; statistics without one (diag, and those of earlier versions) are scored as before."""
    s = ctx.cfg.select
    tensors, meta = load_tensors(ctx.root / STATS)
    mean, std, skew = tensors["mean"], tensors["std"], tensors["skewness"]
    meta["short_classes"] = short_classes(meta["classes"], tensors["count"].tolist(), s.ipc, s.allow_short_classes)
    for name, t in (("mean", mean), ("std", std), ("skewness", skew)):
        if not torch.isfinite(t).all():
            c = int((~torch.isfinite(t)).any(dim=1).nonzero()[0])
            raise D3HRError(f"stats.safetensors: non-finite {name} for class '{meta['classes'][c]}'")
    root = read_root(tensors, meta)
    scored = ((mean, std, skew) if root is None  # with a root, z itself is scored (x = 0 + 1 * z), coloured below
              else (torch.zeros_like(mean), torch.ones_like(std), tensors["skewness_white"]))
    bar = progress(len(mean), f"select ({strategy}, m={s.candidates if strategy == 'group' else 1})", "class")
    num_pools = len(mean) if s.pools is None else min(s.pools, len(mean))
    mine = ctx.world.shard(range(num_pools))  # whole pools per process: the same arithmetic as one process
    part = select_groups(*scored, ipc, s.candidates, tuple(s.weights), ctx.cfg.seed, s.pools, s.chunk, strategy,
                         progress=bar.update, pool_ids=mine)
    bar.close()
    cls = [c for c in range(len(mean)) if c % num_pools in mine]
    parts = ctx.world.all_gather((cls, part.x[cls], part.index[cls], part.loss[cls], part.loss_first[cls]))
    if not ctx.world.is_main:
        return None
    sel = part
    for c_idx, x, index, loss, loss_first in parts:
        sel.x[c_idx], sel.index[c_idx], sel.loss[c_idx], sel.loss_first[c_idx] = x, index, loss, loss_first
    extra: dict[str, Any] = {}
    if root is not None:
        sel.x = mean.float()[:, None, :] + root.color(sel.x)  # (C, ipc, D) x = mu + L z
        extra = {"covariance": meta["covariance"],
                 "color": "x = mean + L z, L = cov_factor (full) or the low-rank root (d3hr.distillation.covariance)"}
    return sel, meta, extra


def _groups(ctx: Context, out: Path, key: str, strategy: str) -> dict[str, Any]:
    """Group sampling (or one random group) of IPC latents per class (``_draw``), written as the selection."""
    s = ctx.cfg.select
    drawn = _draw(ctx, strategy, s.ipc)
    if drawn is None:
        return {}
    sel, meta, extra = drawn
    short = meta["short_classes"]
    tensors = {"latents": sel.x.reshape(len(sel.x), s.ipc, *meta["latent_shape"]), "index": sel.index,
               "pool": sel.pool, "loss": sel.loss, "loss_first": sel.loss_first}
    save_tensors(out, tensors, {"key": key, "classes": meta["classes"], "method": ctx.method, "strategy": strategy,
                                "ipc": s.ipc, "short_classes": short, "seed": ctx.cfg.seed,
                                "candidates": s.candidates, "weights": s.weights, "pools": s.pools, "draws": DRAWS,
                                **extra})
    gain = float((1 - sel.loss / sel.loss_first.clamp_min(1e-12)).mean())
    say(f"[select] {strategy}: mean loss {float(sel.loss.mean()):.4f} "
        f"({100 * gain:.1f}% under a single random group)")
    return {"mean_loss": float(sel.loss.mean()), "mean_loss_gain_over_first": gain, "short_classes": short,
            **_covariance_record(extra)}


def _covariance_record(extra: dict[str, Any]) -> dict[str, Any]:
    """The covariance model a group draw used, for stages.json (nothing for diag)."""
    return {"covariance": extra["covariance"]} if "covariance" in extra else {}


@register_method("d3hr", needs_generator=True, needs_inversion=True, level="K",
                 key_fields=("seed", *_SELECT, "select.candidates", "select.weights", "select.pools"))
def d3hr(ctx: Context, out: Path, key: str) -> dict[str, Any]:
    """D3HR: of m candidate groups per class, the one whose mean, std and skewness match the class best."""
    return _groups(ctx, out, key, "group")


@register_method("base-rs", needs_generator=True, needs_inversion=True, level="K",
                 key_fields=("seed", *_SELECT, "select.pools"))
def base_rs(ctx: Context, out: Path, key: str) -> dict[str, Any]:
    """Base-RS (paper ablation): one random group per class from the class statistics, no search."""
    return _groups(ctx, out, key, "random")


# ----- baselines: real images, centroids, noised real latents -----------------------------------------------------
def _class_indices(ctx: Context, c: int) -> torch.Tensor:
    return torch.as_tensor(np.flatnonzero(ctx.train_set.targets == c))  # (N_c,) the class's training images


def _pad(rows: list[torch.Tensor], ipc: int, fill: float) -> torch.Tensor:
    """Per-class rows (n_c, ...), n_c <= ipc, stacked into (C, ipc, ...); the rows of short classes end in ``fill``."""
    out = torch.full((len(rows), ipc, *rows[0].shape[1:]), fill, dtype=rows[0].dtype)
    for c, r in enumerate(rows):
        out[c, : len(r)] = r
    return out


def _write_rows(ctx: Context, out: Path, key: str, index_rows: list[torch.Tensor], latent_rows: list[torch.Tensor],
                details: dict[str, Any]) -> dict[str, Any]:
    """Save per-class training-image indices (n_c,) and/or latents (n_c, c, h, w) as one selection."""
    s, ds = ctx.cfg.select, ctx.train_set
    short = short_classes(ds.classes, ds.class_counts().tolist(), s.ipc, s.allow_short_classes)
    tensors = {"count": torch.as_tensor([len(r) for r in latent_rows or index_rows])}  # (C,) images per class
    if latent_rows:
        tensors["latents"] = _pad(latent_rows, s.ipc, 0.0)  # (C, ipc, c, h, w)
    if index_rows:
        tensors["image_index"] = _pad(index_rows, s.ipc, -1)  # (C, ipc)
    save_tensors(out, tensors, {"key": key, "classes": ds.classes, "method": ctx.method, "ipc": s.ipc,
                                "short_classes": short, "seed": ctx.cfg.seed, "details": details})
    say(f"[select] {ctx.method}: {int(tensors['count'].sum())} {'latents' if latent_rows else 'images'}")
    return {"short_classes": short, "details": details}


def _per_class(ctx: Context, row) -> list[torch.Tensor]:
    bar = progress(len(ctx.train_set.classes), f"select ({ctx.method})", "class")
    rows = []
    for c in range(len(ctx.train_set.classes)):
        rows.append(row(c, _class_indices(ctx, c)))
        bar.update(1)
    bar.close()
    return rows


@register_method("random-real", needs_generator=False, needs_inversion=False, level="images",
                 key_fields=("seed", *_SELECT))
def random_real(ctx: Context, out: Path, key: str) -> dict[str, Any]:
    """Random real: IPC training images per class, drawn uniformly without replacement."""
    if not ctx.world.is_main:  # baselines are not sharded: rank 0 selects, the others wait
        return {}
    ipc, seed = ctx.cfg.select.ipc, ctx.cfg.seed
    rows = _per_class(ctx, lambda c, idx: idx[random_subset(len(idx), ipc, seed, c)])
    return _write_rows(ctx, out, key, rows, [], {"images": RANDOM_DRAW})


def _herding_teacher(ctx: Context) -> tuple[Any, dict[str, Any]]:
    if ctx.teacher is None:
        raise D3HRError("method herding needs the evaluation teacher: run it through d3hr's API or CLI")
    return ctx.teacher(ctx, HERDING_TEACHER)  # every rank takes part (under torchrun it trains with DDP)


@register_method("herding", needs_generator=False, needs_inversion=False, level="images", key_fields=_SELECT,
                 key_inputs=lambda ctx: {"teacher_sha256": _herding_teacher(ctx)[1]["sha256"]})
def herding(ctx: Context, out: Path, key: str) -> dict[str, Any]:
    """Herding: greedy herding of training images on the evaluation teacher's penultimate features (the teacher's
    weights sha256 is part of the selection's key)."""
    teacher, info = _herding_teacher(ctx)
    if not ctx.world.is_main:
        return {}
    ipc, ds = ctx.cfg.select.ipc, ctx.train_set
    rows = _per_class(ctx, lambda c, idx: idx[herding_indices(penultimate_features(teacher, ds.load(idx.numpy())),
                                                              ipc)])
    return _write_rows(ctx, out, key, rows, [], _teacher_details(info))


def _teacher_details(info: dict[str, Any]) -> dict[str, Any]:
    """Which teacher's features a selection herded on, for the manifest."""
    return {"features": f"penultimate layer of the {HERDING_TEACHER} evaluation teacher", "teacher": info["path"],
            "teacher_sha256": info["sha256"], "teacher_epochs": info["epochs"], "teacher_test_top1": info["test_top1"]}


@register_method("kmeans-latent", needs_generator=True, needs_inversion=False, level="0",
                 key_fields=("seed", *_SELECT))
def kmeans_latent(ctx: Context, out: Path, key: str) -> dict[str, Any]:
    """k-means in VAE latent space: IPC centroids of each class's latents z0, decoded."""
    if not ctx.world.is_main:
        return {}
    gen, ipc, seed = ctx.generator(), ctx.cfg.select.ipc, ctx.cfg.seed

    def centroids(c: int, idx: torch.Tensor) -> torch.Tensor:
        z0 = ctx.encode(gen, idx.numpy())  # (N_c, c, h, w)
        k = min(ipc, len(idx))
        return kmeans_centroids(z0.flatten(1), k, derive_seed(seed, "kmeans", c)).reshape(k, *z0.shape[1:])

    details = {"latents": "VAE posterior mean z0", "level": 0, "n_init": KMEANS_INIT,
               "random_state": "sha256('seed:kmeans:c') mod 2^32"}
    return _write_rows(ctx, out, key, [], _per_class(ctx, centroids), details)


@register_method("base-ddpm", needs_generator=True, needs_inversion=False, level="K",
                 key_fields=("seed", *_SELECT, "diffusion.num_steps", "diffusion.inversion_steps",
                             "diffusion.guidance_scale"))
def base_ddpm(ctx: Context, out: Path, key: str) -> dict[str, Any]:
    """Base-DDPM (paper ablation): random real latents noised forward to level K, then DDIM-sampled back."""
    if not ctx.world.is_main:
        return {}
    gen, ipc, seed = ctx.generator(), ctx.cfg.select.ipc, ctx.cfg.seed
    level = ctx.level()
    alpha = float(ctx.grid(gen).alphas[level])
    index_rows = _per_class(ctx, lambda c, idx: idx[random_subset(len(idx), ipc, seed, c)])
    latent_rows = []
    for c, idx in enumerate(index_rows):
        z0 = ctx.encode(gen, idx.numpy())  # (n_c, c, h, w)
        eps = torch.randn(z0.shape, generator=generator_for(seed, "base-ddpm", c))
        latent_rows.append(forward_noise(z0, alpha, eps))  # level K
    details = {"latents": "VAE posterior mean z0", "images": RANDOM_DRAW, "level": level, "alpha": alpha,
               "eps": "randn seeded by sha256('seed:base-ddpm:c')"}
    return _write_rows(ctx, out, key, index_rows, latent_rows, details)


# ----- d3hr's own: group sampling, then herding on the generated pool -----------------------------------------------
@register_method("d3hr-herd", needs_generator=True, needs_inversion=True, level="K",
                 key_fields=("seed", *_SELECT, "select.candidates", "select.weights", "select.pools",
                             "select.herd_pool", "diffusion.precision", "data.fit"),
                 key_inputs=lambda ctx: {"teacher_sha256": _herding_teacher(ctx)[1]["sha256"]})
def d3hr_herd(ctx: Context, out: Path, key: str) -> dict[str, Any]:
    """D3HR + herding (d3hr's own): a generated pool of herd_pool x IPC per class, IPC kept by feature herding.

    Not the paper's method: group sampling draws the pool, herding toward the real class mean keeps IPC of it.

    The pool is one group of P = ``select.herd_pool`` x IPC members chosen by D3HR's group sampling (its moments
    match the class's in the inverted domain; with stats.covariance it is coloured as for d3hr). Every member is
    DDIM-sampled and decoded as the generate stage would, and greedy herding (``herding_indices``) on the evaluation
    teacher's penultimate features picks IPC of them whose feature mean tracks the mean over the class's *real*
    training images: the selection moves from matching moments of latents to matching what a classifier sees,
    which corrects the generator's drift in feature space. It uses the same teacher as the herding baseline (its
    weights' sha256 is in the key). The chosen latents are the selection, so the generate stage samples them again
    (the same images up to float rounding of batched convolutions). Cost: P x IPC generated images per class; the
    pool is generated on the main process only.
    """
    teacher, info = _herding_teacher(ctx)  # every rank: under torchrun it trains with DDP
    s = ctx.cfg.select
    size = s.herd_pool * s.ipc
    drawn = _draw(ctx, "group", size)
    if drawn is None:
        return {}
    sel, meta, extra = drawn
    gen, level, bs = ctx.generator(), ctx.level(), ctx.cfg.generate.batch_size
    labels = ctx.class_labels(gen)
    pool = sel.x.reshape(len(sel.x), size, *meta["latent_shape"])  # (C, P * ipc, c, h, w)
    bar = progress(pool.shape[0] * size, f"select (d3hr-herd, pool of {size})", "img")
    chosen, gaps = [], {"herded": [], "first_ipc": [], "pool": []}
    for c in range(len(pool)):
        images = []
        for i in range(0, size, bs):
            images.append(render(ctx, gen, pool[c, i : i + bs], labels[c], level))  # uint8 (b, C, s, s)
            bar.update(len(images[-1]))
        feats = penultimate_features(teacher, torch.cat(images)).double()  # (P * ipc, F)
        real = penultimate_features(teacher, ctx.train_set.load(_class_indices(ctx, c).numpy())).double().mean(0)
        idx = herding_indices(feats, s.ipc, target=real)  # (ipc,)
        chosen.append(idx)
        for name, rows in (("herded", feats[idx]), ("first_ipc", feats[: s.ipc]), ("pool", feats)):
            gaps[name].append(float((rows.mean(0) - real).norm()))  # distance of the set's mean to the real mean
    bar.close()
    index = torch.stack(chosen)  # (C, ipc) positions in the pool
    latents = torch.stack([pool[c, index[c]] for c in range(len(pool))])  # (C, ipc, c, h, w)
    short = meta["short_classes"]
    save_tensors(out, {"latents": latents, "pool_index": index, "group_loss": sel.loss},
                 {"key": key, "classes": meta["classes"], "method": ctx.method, "strategy": "group+herding",
                  "ipc": s.ipc, "short_classes": short, "seed": ctx.cfg.seed, "candidates": s.candidates,
                  "weights": s.weights, "pools": s.pools, "draws": DRAWS, "herd_pool": s.herd_pool, **extra})
    mean_gap = {name: sum(v) / len(v) for name, v in gaps.items()}
    say(f"[select] d3hr-herd: teacher-feature distance to the real class mean {mean_gap['herded']:.3f} herded, "
        f"{mean_gap['first_ipc']:.3f} for IPC pool members taken as drawn, {mean_gap['pool']:.3f} for the pool")
    details = {"pool": size, **_teacher_details(info), "feature_gap": mean_gap, "feature_gap_per_class": gaps}
    return {"mean_loss": float(sel.loss.mean()), "short_classes": short, "details": details,
            **_covariance_record(extra)}
