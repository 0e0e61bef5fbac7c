"""The invert stage: encode every training image, DDIM-invert it to level K, and stream per-class moments before
and after (DESIGN.md section 2). Cached by key in the cache's stats/ folder, resumable from partial moments.

Under torchrun, rank r inverts batches r, r + K, r + 2K, ...; rank 0 merges every batch's moments in batch order,
exactly as one process does, so the statistics are the same bytes.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import numpy as np
import torch

from d3hr.data import fit_to_model
from d3hr.diffusion import DDIMGrid, ddim_invert
from d3hr.distillation.context import Context
from d3hr.distillation.moments import Moments, normality_summary
from d3hr.errors import D3HRError
from d3hr.generator import Generator
from d3hr.runfolder import STATS, STATS_PARTIAL
from d3hr.utils.io import atomic_path, load_tensors, save_tensors, sha256_json
from d3hr.utils.progress import progress, say
from d3hr.utils.seeding import generator_for

NAME = "invert"


def applies(ctx: Context) -> bool:
    return ctx.spec.needs_inversion


def checkpoint_seconds() -> float:
    """How often inversion writes its partial moments (seconds); D3HR_CHECKPOINT_SECONDS overrides the 30 s default."""
    return float(os.environ.get("D3HR_CHECKPOINT_SECONDS", "30"))


def stage_key(ctx: Context, previous: str | None) -> str:
    """The generator's key, the data and every diffusion setting the statistics depend on."""
    d = ctx.cfg.diffusion
    return sha256_json({"generator": previous, "data": ctx.data_identity(), "num_steps": d.num_steps,
                        "inversion_steps": d.inversion_steps, "guidance_scale": d.guidance_scale, "encode": d.encode,
                        "precision": d.precision, "batch_size": d.batch_size,
                        "seed": ctx.cfg.seed if d.encode == "sample" else None})


def run(ctx: Context, previous: str | None) -> str:
    """Write RUN/stats.safetensors (skipped when unchanged, copied from the cache when an earlier run made it);
    returns the stage's key."""
    ctx.check_data(ipc=False)
    key = stage_key(ctx, previous)
    out = ctx.root / STATS
    cached = ctx.cache() / "stats" / f"{key[:16]}.safetensors"
    action = None
    if ctx.world.is_main:
        if ctx.folder.done(NAME, key, [STATS]):
            action = "skip"
        elif cached.is_file() and load_tensors(cached)[1].get("key") == key:
            action = "cache"
    action = ctx.world.broadcast(action)
    if action == "skip":
        say(f"[invert] unchanged, skipped ({out})")
        if ctx.world.is_main:
            rec = ctx.folder.state()[NAME]
            say(_normality_table(rec["normality_z0"], rec["normality_zk"], ctx.cfg.diffusion.inversion_steps))
        return key
    if action == "cache":
        if ctx.world.is_main:
            with atomic_path(out, ".safetensors") as tmp:
                shutil.copyfile(cached, tmp)
            _, meta = load_tensors(out)
            ctx.record(NAME, key, 0.0, from_cache=str(cached), normality_z0=meta["normality_z0"],
                         normality_zk=meta["normality_zk"])
            say(f"[invert] same generator, data and diffusion settings as an earlier run: copied {cached}")
            say(_normality_table(meta["normality_z0"], meta["normality_zk"],
                                 ctx.cfg.diffusion.inversion_steps))
        ctx.world.barrier()
        return key
    gen = ctx.generator()
    t0 = time.time()
    ds, d = ctx.train_set, ctx.cfg.diffusion
    labels_map = ctx.class_labels(gen)
    grid, eps_fn = ctx.grid(gen), ctx.eps_fn(gen)
    num_classes, dim = len(ds.classes), int(np.prod(gen.latent_shape))
    partial = ctx.root / STATS_PARTIAL
    m0, mk, start = Moments.zeros(num_classes, dim), Moments.zeros(num_classes, dim), 0
    if ctx.world.is_main and partial.is_file():
        tensors, meta = load_tensors(partial)
        if meta.get("key") == key:
            m0, mk = Moments.from_tensors(tensors, "z0"), Moments.from_tensors(tensors, "zk")
            start = int(meta["next_batch"])
            say(f"[invert] resuming at batch {start}")
    start = ctx.world.broadcast(start)
    batches = [np.arange(i, min(i + d.batch_size, len(ds))) for i in range(0, len(ds), d.batch_size)]
    bar = progress(len(ds), f"invert (K={d.inversion_steps}/{d.num_steps})", "img")
    bar.update(int(sum(len(b) for b in batches[:start])))
    last_save = time.time()
    for first in range(start, len(batches), ctx.world.size):  # one round: batch first + r on rank r
        b = first + ctx.world.rank
        mine = _invert_batch(ctx, gen, b, batches[b], labels_map, grid, eps_fn) if b < len(batches) else None
        done = [x for x in ctx.world.all_gather(mine) if x is not None]  # in batch order
        for item in done:
            if isinstance(item, str):
                raise D3HRError(item)
        if ctx.world.is_main:
            for z0_part, zk_part in done:
                m0 = m0.merge(Moments.expand(z0_part, num_classes))
                mk = mk.merge(Moments.expand(zk_part, num_classes))
        nxt = first + len(done)
        bar.update(int(sum(len(batches[i]) for i in range(first, nxt))))
        if ctx.world.is_main and time.time() - last_save >= checkpoint_seconds() and nxt < len(batches):
            save_tensors(partial, {**m0.tensors("z0"), **mk.tensors("zk")}, {"key": key, "next_batch": nxt})
            last_save = time.time()
    bar.close()
    if ctx.world.is_main:
        before, after = normality_summary(m0), normality_summary(mk)
        tensors = {"mean": mk.mean.float(), "std": mk.std().float(), "skewness": mk.skewness().float(),
                   "excess_kurtosis": mk.excess_kurtosis().float(), "count": mk.n.to(torch.int64),
                   "z0.mean": m0.mean.float(), "z0.std": m0.std().float(), "z0.skewness": m0.skewness().float(),
                   "z0.excess_kurtosis": m0.excess_kurtosis().float()}
        meta = {"key": key, "classes": ds.classes, "latent_shape": list(gen.latent_shape),
                "inversion_steps": d.inversion_steps, "num_steps": d.num_steps,
                "guidance_scale": d.guidance_scale, "normality_z0": before, "normality_zk": after}
        save_tensors(out, tensors, meta)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached, ".safetensors") as tmp:
            shutil.copyfile(out, tmp)
        partial.unlink(missing_ok=True)
        ctx.record(NAME, key, time.time() - t0, images=len(ds), processes=ctx.world.size,
                     normality_z0=before, normality_zk=after)
        say(_normality_table(before, after, d.inversion_steps))
    ctx.world.barrier()
    return key


def _invert_batch(ctx: Context, gen: Generator, b: int, idx: np.ndarray, labels_map: torch.Tensor, grid: DDIMGrid,
                  eps_fn: Any) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]] | str:
    """Encode and invert inversion batch ``b`` (training images ``idx``); its per-class moments of z0 and zk in
    compact form, or a one-line error."""
    d, num_classes = ctx.cfg.diffusion, len(ctx.train_set.classes)
    y = torch.as_tensor(ctx.train_set.targets[idx])
    x = fit_to_model(ctx.train_set.load(idx), ctx.cfg.data.image_size, ctx.cfg.data.fit)
    noise = generator_for(ctx.cfg.seed, "encode", b) if d.encode == "sample" else None
    z0 = gen.encode(x, sample=d.encode == "sample", generator=noise)  # (B, c, h, w)
    zk = ddim_invert(eps_fn, z0, labels_map[y], grid, d.inversion_steps)
    if not (torch.isfinite(z0).all() and torch.isfinite(zk).all()):
        return f"non-finite latents in inversion batch {b} (images {idx[0]}..{idx[-1]})"
    return (Moments.from_batch(z0.flatten(1), y, num_classes).compact(),
            Moments.from_batch(zk.flatten(1), y, num_classes).compact())


def _normality_table(before: dict[str, float], after: dict[str, float], k: int) -> str:
    rows = [("mean |skewness|", "mean_abs_skewness"), ("mean |excess kurtosis|", "mean_abs_excess_kurtosis"),
            ("share normal (K^2, p>0.05)", "share_normal")]
    lines = [f"[invert] normality per class and dimension:  VAE latents -> inverted (K={k})"]
    lines += [f"  {name:<28} {before[key]:8.3f} -> {after[key]:8.3f}" for name, key in rows]
    return "\n".join(lines)
