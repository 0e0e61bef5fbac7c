"""The generator stage: the pretrained generator given, or a small one trained on the data (d3hr.generator.train)
and cached by key; RUN/generator.json points at it and stages.json holds its quality readout and the sha256 of its
weights (the key names the recipe; two trainings of one recipe on machines that round differently share the key
but not the weights, and evaluation records name the weights)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from d3hr import __version__
from d3hr.distillation.context import Context
from d3hr.generator.model import INFO_FILE, generator_sha256
from d3hr.generator.train import train_small
from d3hr.runfolder import POINTER
from d3hr.utils.io import read_json, sha256_json, write_json
from d3hr.utils.progress import say

NAME = "generator"
# Below this VAE reconstruction PSNR (8-bit, held-out training images) the run warns: the Fashion-MNIST generator
# of earlier versions (training MSE 0.033) reconstructs at about 21 dB; a 120-step VAE at 18.6 dB visibly blurs
# (bench/generator_budget.py, README "Your own images").
PSNR_WARN_DB = 20.0


def applies(ctx: Context) -> bool:
    return ctx.spec.needs_generator


def stage_key(ctx: Context, previous: str | None = None) -> str:
    """A pretrained generator's path and class map, or the data and every setting of the one trained here."""
    g = ctx.cfg.generator
    if g.path is not None:
        return sha256_json({"pretrained": str(Path(g.path).resolve()) if Path(g.path).exists() else g.path,
                            "class_map": g.class_map})
    return sha256_json({"data": ctx.data_identity(), "vae": asdict(g.vae), "dit": asdict(g.dit),
                        "precision": g.precision, "seed": g.seed})


def generator_dir(ctx: Context, key: str) -> Path:
    if ctx.cfg.generator.path is not None:
        return Path(ctx.cfg.generator.path)
    return ctx.cache() / "generators" / key[:16]


def run(ctx: Context, previous: str | None) -> str:
    """Provide the generator (ctx.generator_path), training and caching it when needed; returns the stage's key."""
    key = stage_key(ctx)
    path = generator_dir(ctx, key)
    ctx.generator_path = path
    pointer = {"path": str(path.resolve()) if path.exists() else str(path), "key": key,
               "pretrained": ctx.cfg.generator.path is not None}
    ready = ctx.world.broadcast(ctx.cfg.generator.path is not None or (path / "transformer" / "config.json").is_file())
    if ready:
        say(f"[generator] using {path}")
        if ctx.world.is_main and not ctx.folder.done(NAME, key, []):
            write_json(ctx.root / POINTER, pointer)
            ctx.record(NAME, key, 0.0, path=str(path), sha256=generator_sha256(path),
                       quality=quality_readout(ctx, path))
        return key
    ctx.check_data(ipc=False)
    t0 = time.time()
    ds = ctx.train_set
    say(f"[generator] training a small VAE + DiT on {len(ds)} {ds.name} images -> {path}")
    quality = train_small(ctx.cfg, ds, ctx.device, path,  # under torchrun: data parallel, rank 0 writes
                          {"trained_by": f"d3hr {__version__}", "dataset": ctx.data_identity()})
    say(f"[generator] {quality['vae_steps']} VAE steps (final training MSE "
        f"{quality['vae_final_mse'] or float('nan'):.4f}), {quality['dit_steps']} DiT steps (final loss "
        f"{quality['dit_final_loss'] or float('nan'):.4f}) in {time.time() - t0:.0f} s")
    if ctx.world.is_main:
        pointer["path"] = str(path.resolve())
        write_json(ctx.root / POINTER, pointer)
        ctx.record(NAME, key, time.time() - t0, path=str(path), processes=ctx.world.size,
                   sha256=generator_sha256(path), quality=quality_readout(ctx, path))
    ctx.world.barrier()
    return key


def quality_readout(ctx: Context, path: Path) -> dict[str, Any]:
    """The quality readout of a generator trained here (from its provenance file), said with a warning that names
    the key to raise when the VAE's reconstruction is poor; {} for a pretrained generator."""
    info_file = path / INFO_FILE
    quality = read_json(info_file).get("quality", {}) if info_file.is_file() else {}
    psnr = quality.get("vae_psnr_db") if isinstance(quality, dict) else None
    if psnr is None:
        return quality if isinstance(quality, dict) else {}
    say(f"[generator] VAE reconstruction PSNR {psnr:.1f} dB on {quality['vae_heldout_images']} held-out "
        f"training images; DiT final loss {quality.get('dit_final_loss') or float('nan'):.4f}")
    if psnr < PSNR_WARN_DB:
        budget = "steps" if ctx.cfg.generator.vae.steps is not None else "epochs"
        now = getattr(ctx.cfg.generator.vae, budget)
        say(f"[generator] warning: a reconstruction under {PSNR_WARN_DB:.0f} dB blurs every distilled image; "
            f"raise generator.vae.{budget} (now {now}) or generator.vae.block_out_channels")
    return quality
