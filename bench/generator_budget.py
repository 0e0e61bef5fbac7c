"""How the VAE trained here improves with its budget: held-out reconstruction after 1, 2, 4, ... epochs of one run.

For a dataset as d3hr distill would see it (shape inferred from the images), trains the default small VAE once,
resuming from its checkpoint after each budget, and prints per budget the optimizer steps, the seconds, the training
MSE of the last epoch, the held-out MSE on [-1, 1] at the generator's input and the held-out PSNR as saved (the
quality readout of ``d3hr distill``). This is what DEFAULT_VAE_STEPS and PSNR_WARN_DB rest on:

    python bench/generator_budget.py --dataset imagefolder --root DATA --epochs 1,2,4,8,16 --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from d3hr.config import Config
from d3hr.data import fit_to_model, load_raw, resolve_config
from d3hr.data.images import match_channels
from d3hr.generator import build_small
from d3hr.generator.train import heldout_split, reconstruction_psnr, train_vae
from d3hr.utils.io import write_json


@torch.no_grad()
def heldout_mse(gen, ds, idx, size: int, fit: str) -> float:
    """Mean squared error on [-1, 1] of the VAE's reconstructions at the generator's input (padding included)."""
    x = fit_to_model(ds.load(idx), size, fit)
    z = gen.vae.encode(match_channels(x, gen.vae.config.in_channels)).latent_dist.mean
    return float(((gen.vae.decode(z).sample - x) ** 2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--root")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--epochs", default="1,2,4,8,16", help="cumulative epoch budgets at which to measure")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the table")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = Config()
    cfg.data.name, cfg.data.root, cfg.data.limit = args.dataset, args.root, args.limit
    raw = load_raw(cfg.data, "train")
    note = resolve_config(cfg, raw.survey()).note
    ds = raw.reshaped(cfg.data.resolution, cfg.data.channels)
    print(note)
    g, d = cfg.generator, cfg.data
    torch.manual_seed(g.seed)
    gen = build_small(len(ds.classes), ds.channels, d.image_size, g.vae.block_out_channels, g.vae.latent_channels,
                      g.vae.layers_per_block, g.dit.num_layers, g.dit.num_attention_heads, g.dit.attention_head_dim,
                      g.dit.patch_size)
    fit_idx, heldout = heldout_split(len(ds), g.seed)
    per_epoch = math.ceil(len(fit_idx) / g.vae.batch_size)
    ckpt = args.out.with_suffix(".vae.ckpt.safetensors")
    ckpt.unlink(missing_ok=True)
    rows, spent = [], 0.0
    print(f"{'epochs':>6} {'steps':>6} {'seconds':>8} {'train MSE':>10} {'held-out MSE':>13} {'PSNR dB':>8}")
    for epochs in [int(e) for e in args.epochs.split(",")]:
        t0 = time.time()
        losses, _ = train_vae(gen, ds, replace(g.vae, steps=None, epochs=epochs), d.image_size, d.fit, g.seed,
                              g.precision, ckpt, train_idx=fit_idx)
        spent += time.time() - t0
        gen.vae.eval()
        row = {"epochs": epochs, "steps": epochs * per_epoch, "seconds": round(spent, 1), "train_mse": losses[-1],
               "heldout_mse": heldout_mse(gen, ds, heldout, d.image_size, d.fit),
               "psnr_db": reconstruction_psnr(gen, ds, heldout, d.image_size, d.fit)}
        rows.append(row)
        print(f"{epochs:>6} {row['steps']:>6} {row['seconds']:>8.0f} {row['train_mse']:>10.4f} "
              f"{row['heldout_mse']:>13.4f} {row['psnr_db']:>8.2f}", flush=True)
    ckpt.unlink(missing_ok=True)
    write_json(args.out, {"data": note, "images": len(ds), "heldout": len(heldout), "batch_size": g.vae.batch_size,
                          "block_out_channels": g.vae.block_out_channels, "threads": torch.get_num_threads(),
                          "rows": rows})


if __name__ == "__main__":
    main()
