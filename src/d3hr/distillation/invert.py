"""The invert stage: encode training images, DDIM-invert them to level K, and stream per-class moments before
and after (DESIGN.md section 2). Cached by key in the cache's stats/ folder, resumable from partial moments.

Which images: every one (invert.per_class=all), or each class in a seeded order, round by round, until the stopping
rule of d3hr.distillation.subsample says its moments are precise enough for the run's IPC (or a cap is reached).
With diffusion.inversion_steps=auto the walk streams moments at several levels and d3hr.distillation.depth picks K.

Under torchrun, within each round rank r inverts batches r, r + P, r + 2P, ...; rank 0 merges every batch's moments
in batch order, exactly as one process does, so the statistics are the same bytes.

With stats.covariance full or lowrank:R the same loop also streams co-moments (full) and keeps the inverted latents
on rank 0, and the class models of d3hr.distillation.covariance are fitted at the end; diag adds nothing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d3hr.config import AUTO_COVARIANCE, AUTO_COVARIANCE_MIN_IPC, auto_levels, covariance_form, resolve_covariance
from d3hr.data import fit_to_model
from d3hr.diffusion import DDIMGrid, ddim_invert_levels
from d3hr.distillation.context import Context
from d3hr.distillation.covariance import JointStream, check_fits, fit
from d3hr.distillation.depth import choose_level
from d3hr.distillation.moments import Moments, normality_summary
from d3hr.distillation.subsample import ALL, Plan, make_plan, per_class_record
from d3hr.errors import D3HRError
from d3hr.generator import Generator
from d3hr.runfolder import STATS, STATS_PARTIAL
from d3hr.utils.checkpoint import checkpoint_seconds
from d3hr.utils.io import atomic_path, load_tensors, save_tensors, sha256_json
from d3hr.utils.progress import progress, say
from d3hr.utils.seeding import generator_for

NAME = "invert"


def applies(ctx: Context) -> bool:
    return ctx.spec.needs_inversion


SAVE_SECONDS = 30.0  # inversion writes its partial moments at most this often (D3HR_CHECKPOINT_SECONDS overrides)


def stage_key(ctx: Context, previous: str | None) -> str:
    """The generator's key, the data, every diffusion setting the statistics depend on, the subsampling plan
    (with the IPC its rule reads) and, unless diag (whose keys are those of earlier versions), stats.covariance and
    stats.shrinkage."""
    d, v = ctx.cfg.diffusion, ctx.cfg.invert
    depth = {"levels": auto_levels(d), "reach": d.auto_reach} if d.inversion_steps == "auto" else None
    plan = None
    if v.per_class != ALL:
        plan = {"per_class": v.per_class, "tolerance": v.tolerance, "check_every": v.check_every,
                "seed": order_seed(ctx), "ipc": ctx.cfg.select.ipc if v.tolerance is not None else None}
    fields = {"generator": previous, "data": ctx.data_identity(), "num_steps": d.num_steps,
              "inversion_steps": d.inversion_steps, "guidance_scale": d.guidance_scale, "encode": d.encode,
              "precision": d.precision, "batch_size": d.batch_size, "depth": depth, "subsample": plan,
              "seed": ctx.cfg.seed if d.encode == "sample" else None}
    s = ctx.cfg.stats
    form = covariance_text(ctx)
    if form != "diag":  # auto: the form it resolves to, so that it shares statistics with that form
        fields["covariance"] = {"form": form, "shrinkage": s.shrinkage}
        if s.kept_per_class != "auto":  # auto's cap follows from the key's generator, data and plan
            fields["covariance"]["kept_per_class"] = s.kept_per_class
    return sha256_json(fields)


def covariance_text(ctx: Context) -> str:
    """stats.covariance with auto resolved by the run's IPC (d3hr.config.resolve_covariance)."""
    return resolve_covariance(ctx.cfg.stats.covariance, ctx.cfg.select.ipc)


def order_seed(ctx: Context) -> int:
    """The seed of the visiting order: invert.seed (default 0), or the run's seed when it is null."""
    return ctx.cfg.seed if ctx.cfg.invert.seed is None else ctx.cfg.invert.seed


def levels(ctx: Context) -> list[int]:
    """The grid levels whose moments inversion streams: K, or the candidates of K=auto."""
    d = ctx.cfg.diffusion
    return auto_levels(d) if d.inversion_steps == "auto" else [int(d.inversion_steps)]


def run(ctx: Context, previous: str | None) -> str:
    """Write RUN/stats.safetensors (skipped when unchanged, copied from the cache when an earlier run made it);
    returns the stage's key."""
    ctx.check_data(ipc=False)
    key = stage_key(ctx, previous)
    if ctx.cfg.stats.covariance == "auto" and ctx.world.is_main:
        say(f"[invert] stats.covariance=auto: {covariance_text(ctx)} at IPC {ctx.cfg.select.ipc} ("
            f"{AUTO_COVARIANCE} from IPC {AUTO_COVARIANCE_MIN_IPC} on, diag below)")
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
            say(_normality_table(rec["normality_z0"], rec["normality_zk"], ctx.level()))
        return key
    if action == "cache":
        if ctx.world.is_main:
            with atomic_path(out, ".safetensors") as tmp:
                shutil.copyfile(cached, tmp)
            tensors, meta = load_tensors(out)
            ctx.record(NAME, key, 0.0, from_cache=str(cached), images=int(tensors["count"].sum()),
                       normality_z0=meta["normality_z0"],
                       normality_zk=meta["normality_zk"], inversion_steps=meta["inversion_steps"],
                       **{k: meta[k] for k in ("subsample", "depth", "covariance", "covariance_fit") if k in meta})
            say(f"[invert] same generator, data and diffusion settings as an earlier run: copied {cached}")
            say(_normality_table(meta["normality_z0"], meta["normality_zk"], meta["inversion_steps"]))
        ctx.world.barrier()
        return key
    _invert(ctx, key, out, cached)
    return key


def _invert(ctx: Context, key: str, out: Path, cached: Path) -> None:
    """Invert the plan's images round by round (resuming from RUN/stats.partial.safetensors) and write the stats."""
    gen = ctx.generator()
    t0 = time.time()
    ds, d, v = ctx.train_set, ctx.cfg.diffusion, ctx.cfg.invert
    labels_map = ctx.class_labels(gen)
    grid, eps_fn = ctx.grid(gen), ctx.eps_fn(gen)
    num_classes, dim, levs = len(ds.classes), int(np.prod(gen.latent_shape)), levels(ctx)
    plan = make_plan(ds.targets, num_classes, v.per_class, v.tolerance, v.check_every, order_seed(ctx),
                     ctx.cfg.select.ipc)
    cov = covariance_text(ctx)
    cap = check_fits(cov, dim, num_classes, plan.max_images, len(levs), ctx.cfg.stats.kept_per_class)
    if cap is not None and ctx.cfg.stats.kept_per_class == "auto" and ctx.world.is_main:
        say(f"[invert] stats.covariance={cov}: the latents of up to {plan.max_images} images do not fit the memory "
            f"budget; the class models are fitted on the first {cap} of each class in the seeded visiting order "
            "(stats.kept_per_class)")
    form = covariance_form(cov)[0]
    partial = ctx.root / STATS_PARTIAL
    m0 = Moments.zeros(num_classes, dim)
    mk = {k: Moments.zeros(num_classes, dim) for k in levs}
    joint = JointStream.start(cov, levs, num_classes, dim, cap) if form != "diag" and ctx.world.is_main else None
    state = {"round": 0, "next_batch": 0, "active": list(range(num_classes))}
    if ctx.world.is_main and partial.is_file():
        tensors, meta = load_tensors(partial)
        if meta.get("key") == key:
            m0 = Moments.from_tensors(tensors, "z0")
            mk = {k: Moments.from_tensors(tensors, f"zk{k}") for k in levs}
            joint = JointStream.from_tensors(cov, levs, tensors, num_classes, cap) if joint is not None else None
            state = {k: meta[k] for k in state}
            say(f"[invert] resuming at round {state['round']}, batch {state['next_batch']}")
    state = ctx.world.broadcast(state)
    bar = progress(plan.max_images, _bar_label(d, plan), "img")
    bar.update(int(sum(m0.n)))
    last_save = time.time()
    r, start, active = state["round"], state["next_batch"], state["active"]
    while active:
        idx = plan.round_indices(r, active)
        batches = [idx[i : i + d.batch_size] for i in range(0, len(idx), d.batch_size)]
        for first in range(start, len(batches), ctx.world.size):  # one step: batch first + rank on each rank
            b = first + ctx.world.rank
            mine = (_invert_batch(ctx, gen, (r, b), batches[b], labels_map, grid, eps_fn, levs, form)
                    if b < len(batches) else None)
            done = [x for x in ctx.world.all_gather(mine) if x is not None]  # in batch order
            for item in done:
                if isinstance(item, str):
                    raise D3HRError(item)
            if ctx.world.is_main:
                for z0_part, zk_parts, joint_part in done:
                    m0 = m0.merge(Moments.expand(z0_part, num_classes))
                    mk = {k: mk[k].merge(Moments.expand(part, num_classes)) for k, part in zip(levs, zk_parts)}
                    if joint is not None:
                        joint.add(joint_part)
            nxt = first + len(done)
            bar.update(int(sum(len(batches[i]) for i in range(first, nxt))))
            if ctx.world.is_main and time.time() - last_save >= checkpoint_seconds(SAVE_SECONDS):
                # a round's last batch too: resumed there, the round's end (the rule) runs from these moments
                _save_partial(partial, key, m0, mk, {"round": r, "next_batch": nxt, "active": active}, joint)
                last_save = time.time()
        active = ctx.world.broadcast(plan.still_active(r, active, list(mk.values())) if ctx.world.is_main else None)
        r, start = r + 1, 0
    bar.close()
    error = None
    if ctx.world.is_main:
        try:
            _write_stats(ctx, key, out, cached, m0, mk, plan, time.time() - t0, joint)
        except D3HRError as exc:  # a class model that cannot be fitted: every rank stops with the same line
            error = str(exc)
        else:
            partial.unlink(missing_ok=True)
    error = ctx.world.broadcast(error)
    if error is not None:
        raise D3HRError(error)
    ctx.world.barrier()


def _bar_label(d: Any, plan: Plan) -> str:
    rule = "" if plan.tolerance is None else f", rule {plan.tolerance:g}"
    return f"invert (K={d.inversion_steps}/{d.num_steps}{rule})"


def _save_partial(path: Path, key: str, m0: Moments, mk: dict[int, Moments], state: dict[str, Any],
                  joint: JointStream | None = None) -> None:
    tensors = {**m0.tensors("z0")}
    for k, m in mk.items():
        tensors.update(m.tensors(f"zk{k}"))
    if joint is not None:
        tensors.update(joint.tensors())
    save_tensors(path, tensors, {"key": key, **state})


def _write_stats(ctx: Context, key: str, out: Path, cached: Path, m0: Moments, mk: dict[int, Moments], plan: Plan,
                 seconds: float, joint: JointStream | None = None) -> None:
    """Write RUN/stats.safetensors and its cache copy from the streamed moments, record the stage."""
    tensors, meta, extra = stats_payload(ctx, key, m0, mk, plan, joint)
    if "depth" in extra:
        say(_depth_table(extra["depth"]["levels"], meta["inversion_steps"]))
    if "covariance_fit" in extra:
        f = extra["covariance_fit"]
        say(f"[invert] stats.covariance={f['covariance']}: shrinkage rho {f['rho_min']:.3f}..{f['rho_max']:.3f} "
            f"(mean {f['rho_mean']:.3f}), {f['storage_mb']:.2f} MB of class models")
    if "subsample" in extra:
        counts = ", ".join(str(c["images"]) for c in extra["subsample"]["classes"])
        say(f"[invert] {extra['subsample']['inverted']} of {len(ctx.train_set)} images inverted (per class: "
            f"{counts}); normality diagnostics on these images")
    save_tensors(out, tensors, {**meta, **extra})
    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached, ".safetensors") as tmp:
        shutil.copyfile(out, tmp)
    ctx.record(NAME, key, seconds, images=int(tensors["count"].sum()), processes=ctx.world.size,
               normality_z0=meta["normality_z0"], normality_zk=meta["normality_zk"],
               inversion_steps=meta["inversion_steps"], **extra)
    say(_normality_table(meta["normality_z0"], meta["normality_zk"], meta["inversion_steps"]))


def stats_payload(ctx: Context, key: str, m0: Moments, mk: dict[int, Moments], plan: Plan,
                  joint: JointStream | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """What RUN/stats.safetensors holds for the moments of z0 and of each streamed level (and, with ``joint``, the
    class models of stats.covariance at level K): its tensors, its metadata, and the subsampling, depth and
    covariance records (also in stages.json). K is the configured level, or the depth rule's choice under
    K=auto."""
    d, ds = ctx.cfg.diffusion, ctx.train_set
    per_level = {k: normality_summary(m) for k, m in mk.items()}
    extra: dict[str, Any] = {}
    if d.inversion_steps == "auto":
        k = choose_level(list(mk), [per_level[k]["mean_abs_skewness"] for k in mk], d.auto_reach)
        extra["depth"] = {"chosen": k, "reach": d.auto_reach, "rule": "mean |skewness|",
                          "levels": {str(lv): s for lv, s in per_level.items()}}
    else:
        k = int(d.inversion_steps)
    m = mk[k]
    if plan.round_size is not None:
        extra["subsample"] = {"per_class": ctx.cfg.invert.per_class, "tolerance": plan.tolerance, "ipc": plan.ipc,
                              "check_every": plan.round_size, "seed": order_seed(ctx), "inverted": int(m.n.sum()),
                              "available": len(ds), "classes": per_class_record(ds.classes, m, plan.ipc)}
    tensors = {"mean": m.mean.float(), "std": m.std().float(), "skewness": m.skewness().float(),
               "excess_kurtosis": m.excess_kurtosis().float(), "count": m.n.to(torch.int64),
               "z0.mean": m0.mean.float(), "z0.std": m0.std().float(), "z0.skewness": m0.skewness().float(),
               "z0.excess_kurtosis": m0.excess_kurtosis().float()}
    if joint is not None:
        s = ctx.cfg.stats
        form = covariance_text(ctx)
        joint_tensors, extra["covariance_fit"] = fit(joint, k, form, s.shrinkage, ds.classes)
        extra["covariance"] = form  # what select reads back from the metadata (absent: diag)
        tensors.update(joint_tensors)
    meta = {"key": key, "classes": ds.classes, "latent_shape": list(ctx.generator().latent_shape),
            "inversion_steps": k, "num_steps": d.num_steps, "guidance_scale": d.guidance_scale,
            "normality_z0": normality_summary(m0), "normality_zk": per_level[k]}
    return tensors, meta, extra


def _invert_batch(ctx: Context, gen: Generator, where: tuple[int, int], idx: np.ndarray, labels_map: torch.Tensor,
                  grid: DDIMGrid, eps_fn: Any, levs: list[int], form: str = "diag"
                  ) -> tuple[tuple[torch.Tensor, ...], list[tuple[torch.Tensor, ...]], Any] | str:
    """Encode and invert batch ``where`` = (round, batch) of training images ``idx``; the per-class moments of z0
    and of the latents at each of ``levs`` in compact form, and the share of JointStream (None for diag), or a
    one-line error."""
    d, num_classes = ctx.cfg.diffusion, len(ctx.train_set.classes)
    y = torch.as_tensor(ctx.train_set.targets[idx])
    x = fit_to_model(ctx.train_set.load(idx), ctx.cfg.data.image_size, ctx.cfg.data.fit)
    noise = generator_for(ctx.cfg.seed, "encode", *where) if d.encode == "sample" else None
    z0 = gen.encode(x, sample=d.encode == "sample", generator=noise)  # (B, c, h, w)
    zk = ddim_invert_levels(eps_fn, z0, labels_map[y], grid, levs)  # level -> (B, c, h, w)
    if not (torch.isfinite(z0).all() and all(torch.isfinite(z).all() for z in zk.values())):
        return f"non-finite latents in inversion round {where[0]} batch {where[1]} (images {idx[0]}..{idx[-1]})"
    return (Moments.from_batch(z0.flatten(1), y, num_classes).compact(),
            [Moments.from_batch(zk[k].flatten(1), y, num_classes).compact() for k in levs],
            None if form == "diag" else JointStream.batch(form, y, [zk[k] for k in levs]))


def _depth_table(per_level: dict[str, dict[str, float]], chosen: int) -> str:
    lines = ["[invert] K=auto: per level share normal (K^2), mean |skewness| (the rule's), mean |excess kurtosis|"]
    lines += [f"  K={k:<3} {s['share_normal']:6.3f} {s['mean_abs_skewness']:7.3f} {s['mean_abs_excess_kurtosis']:7.3f}"
              + ("   <- chosen" if int(k) == chosen else "") for k, s in per_level.items()]
    return "\n".join(lines)


def _normality_table(before: dict[str, float], after: dict[str, float], k: int) -> str:
    rows = [("mean |skewness|", "mean_abs_skewness"), ("mean |excess kurtosis|", "mean_abs_excess_kurtosis"),
            ("share normal (K^2, p>0.05)", "share_normal")]
    lines = [f"[invert] normality per class and dimension:  VAE latents -> inverted (K={k})"]
    lines += [f"  {name:<28} {before[key]:8.3f} -> {after[key]:8.3f}" for name, key in rows]
    return "\n".join(lines)
