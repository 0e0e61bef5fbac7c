"""Train the small generator here: the VAE, then the DiT on its latents (with label dropout and EMA).

Under torchrun every rank draws the same batch, noise, timesteps and label dropout (seeded generators), computes the
loss on its contiguous share of the batch, and the gradients are averaged over ranks before each step (data
parallel on torch.distributed), so the ranks hold the same weights; rank 0 writes the checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from d3hr.config import Config, DiTConfig, VAEConfig
from d3hr.data.images import ImageSet, fit_to_model, fit_to_saved, match_channels
from d3hr.diffusion.ddim import forward_noise
from d3hr.errors import D3HRError
from d3hr.generator.model import Generator
from d3hr.utils.checkpoint import checkpoint_seconds, load_checkpoint, save_checkpoint
from d3hr.utils.dist import World, get_world, kernels
from d3hr.utils.io import replace_dir
from d3hr.utils.progress import progress
from d3hr.utils.seeding import generator_for


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batches(n: int, batch_size: int, seed: int, *keys: object) -> list[np.ndarray]:
    perm = torch.randperm(n, generator=generator_for(seed, *keys)).numpy()
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def total_steps(steps: int | None, epochs: int | None, n: int, batch_size: int) -> int:
    """The optimizer steps of a budget given in ``steps``, or in ``epochs`` over ``n`` items."""
    if steps is not None:
        return steps
    if epochs is None:
        raise D3HRError("a training budget needs steps or epochs")
    return epochs * math.ceil(n / batch_size)


HELDOUT_MAX = 256  # training images held out of VAE training to measure its reconstruction
HELDOUT_SHARE = 0.05


def heldout_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(VAE training indices, held-out indices): a seeded 5% of the ``n`` training images, at most 256, at least 1
    (none of a set of fewer than 20 images), for the reconstruction readout."""
    k = min(HELDOUT_MAX, int(n * HELDOUT_SHARE)) if n >= 20 else 0
    perm = torch.randperm(n, generator=generator_for(seed, "vae-heldout")).numpy()
    return np.sort(perm[k:]), np.sort(perm[:k])


@torch.no_grad()
def reconstruction_psnr(gen: Generator, images: ImageSet, idx: np.ndarray, image_size: int, fit: str) -> float:
    """PSNR (dB, 8-bit peak) of the VAE's reconstructions (posterior mean) of the images at ``idx``, compared as
    saved: fitted back to the data's resolution and quantized, against the original uint8 pixels."""
    se, count = 0.0, 0
    for i in range(0, len(idx), 64):
        real = images.load(idx[i : i + 64])  # (b, C, r, r) uint8
        x = fit_to_model(real, image_size, fit)
        z = gen.vae.encode(match_channels(x, gen.vae.config.in_channels).to(gen.device)).latent_dist.mean
        recon = match_channels(gen.vae.decode(z).sample.float().cpu(), images.channels)
        out = fit_to_saved(recon, images.resolution, fit)
        se += float(((out.double() - real.double()) ** 2).sum())
        count += real.numel()
    mse = se / max(count, 1)
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _average_grads(module: torch.nn.Module, world: World) -> None:
    """Average the gradients over ranks (one flat all-reduce)."""
    if not world.distributed:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


SAVE_SECONDS = 120.0  # a training writes its resumable state at most this often, and after every epoch
# (D3HR_CHECKPOINT_SECONDS overrides); inside an epoch too: at small data one epoch can outlast a session
SAVE_SHARE = 0.05  # ... and inside an epoch at most this share of the time (a DiT-XL/2 with EMA and Adam is 11 GB)


@dataclass
class _Position:
    """Where a resumable training stands: epochs done, batches done of the epoch under way and that epoch's running
    loss sum and item count, every finished epoch's loss, and the seconds spent."""

    epoch: int = 0
    batches: int = 0
    total: float = 0.0
    count: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


class _Checkpoints:
    """The resumable state of one training in ``ckpt`` (None: kept nowhere): restored on construction, written by
    rank 0 after every epoch and inside one at most every ``SAVE_SECONDS`` and ``SAVE_SHARE`` of the time (the last
    save's duration / SAVE_SHARE apart), with the epoch's random generator."""

    def __init__(self, ckpt: Path | None, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer):
        self.ckpt, self.modules, self.opt = ckpt, modules, opt
        self.rng, self.pos = torch.Generator(), _Position()
        if ckpt is not None and ckpt.is_file():
            meta = load_checkpoint(ckpt, modules, opt, generators={"epoch": self.rng})
            self.pos = _Position(int(meta["epoch"]), int(meta.get("batches", 0)), float(meta.get("total", 0.0)),
                                 int(meta.get("count", 0)), list(meta.get("losses", [])),
                                 float(meta.get("seconds", 0.0)))
        self.t0 = time.time() - self.pos.seconds
        self.every, self.saved, self.took = checkpoint_seconds(SAVE_SECONDS), time.time(), 0.0
        self.keep = ckpt is not None and get_world().is_main

    def seconds(self) -> float:
        """Seconds spent training, those before a resume included."""
        return time.time() - self.t0

    def epoch_start(self, epoch: int, fresh: torch.Generator) -> tuple[int, float, int, torch.Generator]:
        """(batches to skip, loss sum, item count, the epoch's generator): the checkpoint's when it stopped inside
        ``epoch``, else a fresh start of the epoch with ``fresh``."""
        if epoch == self.pos.epoch and self.pos.batches:
            return self.pos.batches, self.pos.total, self.pos.count, self.rng
        return 0, 0.0, 0, fresh

    def after_batch(self, rng: torch.Generator, epoch: int, done: int, of: int, total: float, count: int) -> None:
        """Save inside the epoch (``done`` of ``of`` batches) when the gap since the last save has passed."""
        gap = max(self.every, self.took / SAVE_SHARE) if self.every > 0 else 0.0
        if self.keep and done < of and time.time() - self.saved >= gap:
            self._save(rng, _Position(epoch, done, total, count, self.pos.losses, self.seconds()))

    def after_epoch(self, rng: torch.Generator, epoch: int, loss: float) -> None:
        """Record the finished epoch's loss and save."""
        self.pos.losses.append(loss)
        if self.keep:
            self._save(rng, _Position(epoch + 1, 0, 0.0, 0, self.pos.losses, self.seconds()))

    def _save(self, rng: torch.Generator, pos: _Position) -> None:
        if self.ckpt is None:
            return
        start = time.time()
        save_checkpoint(self.ckpt, self.modules, self.opt,
                        {"epoch": pos.epoch, "batches": pos.batches, "total": pos.total, "count": pos.count,
                         "losses": pos.losses, "seconds": pos.seconds}, generators={"epoch": rng})
        self.saved = time.time()
        self.took = self.saved - start


def train_vae(gen: Generator, images: ImageSet, cfg: VAEConfig, image_size: int, fit: str, seed: int,
              precision: str = "bf16", ckpt: Path | None = None,
              train_idx: np.ndarray | None = None) -> tuple[list[float], float]:
    """Train ``gen.vae`` to reconstruct the images at ``train_idx`` (default: all) with MSE + KL, for ``cfg.steps``
    optimizer steps (or ``cfg.epochs`` passes), resuming from ``ckpt`` (written every epoch and every
    ``SAVE_SECONDS`` inside one) to the same weights.

    Returns the mean training MSE of every epoch (those before a resume included) and the seconds spent.
    """
    vae, device, world = gen.vae, gen.device, get_world()
    pool = np.arange(len(images)) if train_idx is None else np.asarray(train_idx)
    vae.train().to(memory_format=torch.channels_last)  # measured ~20% faster for conv training on CPU
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    state = _Checkpoints(ckpt, {"vae": vae}, opt)
    pos = state.pos
    per_epoch = math.ceil(len(pool) / cfg.batch_size)
    steps = total_steps(cfg.steps, cfg.epochs, len(pool), cfg.batch_size)
    bar = progress(steps, "train VAE", "step")
    bar.update(min(pos.epoch * per_epoch + pos.batches, steps))
    for epoch in range(pos.epoch, math.ceil(steps / per_epoch)):
        batches = _batches(len(pool), cfg.batch_size, seed, "vae-epoch", epoch)[: steps - epoch * per_epoch]
        skip, total, count, noise = state.epoch_start(epoch, generator_for(seed, "vae-noise", epoch))
        for done, batch in enumerate(batches[skip:], start=skip + 1):
            batch = pool[batch]
            rows = world.rows(len(batch))
            x = match_channels(fit_to_model(images.load(batch[rows.numpy()]), image_size, fit),
                               vae.config.in_channels)
            x = x.to(device, memory_format=torch.channels_last)
            with _autocast(device, precision):
                dist = vae.encode(x).latent_dist
                eps = torch.randn((len(batch), *dist.mean.shape[1:]), generator=noise)[rows]  # the whole batch's draw
                z = dist.mean + dist.std * eps.to(device)
                recon = vae.decode(z).sample
            rec = F.mse_loss(recon.float(), x)
            kl = 0.5 * (dist.mean.float() ** 2 + dist.var.float() - 1.0 - dist.logvar.float()).mean()
            loss = (rec + cfg.kl_weight * kl) * (len(rows) * world.size / len(batch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _average_grads(vae, world)
            opt.step()
            total += world.sum(rec.item() * len(rows))
            count += len(batch)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, mse=f"{total / count:.4f}")
            state.after_batch(noise, epoch, done, len(batches), total, count)
        state.after_epoch(noise, epoch, total / count)
    bar.close()
    vae.eval().to(memory_format=torch.contiguous_format)
    return pos.losses, state.seconds()


@torch.no_grad()
def encode_dataset(gen: Generator, images: ImageSet, image_size: int, fit: str,
                   batch_size: int = 256) -> torch.Tensor:
    """Unscaled posterior means of every training image, (N, c, h, w) float32 (under torchrun each rank encodes
    every size-th batch and all ranks receive all of them, in order)."""
    world = get_world()
    starts = list(range(0, len(images), batch_size))
    mine = {}
    bar = progress(len(images), "encode", "img")
    for i in world.shard(starts):
        idx = np.arange(i, min(i + batch_size, len(images)))
        x = match_channels(fit_to_model(images.load(idx), image_size, fit), gen.vae.config.in_channels)
        mine[i] = gen.vae.encode(x.to(gen.device)).latent_dist.mean.float().cpu()
        bar.update(len(idx) * world.size)
    bar.close()
    if world.distributed:
        for part in world.all_gather(mine):
            mine.update(part)
    return torch.cat([mine[i] for i in starts])


def train_dit(gen: Generator, z0: torch.Tensor, labels: torch.Tensor, cfg: DiTConfig, seed: int,
              precision: str = "bf16", ckpt: Path | None = None) -> tuple[list[float], float]:
    """Train ``gen.transformer`` to predict noise on scaled latents z0 (N, c, h, w) with class labels (N,).

    A share ``cfg.label_dropout`` of labels is replaced by the null label so that classifier-free guidance works.
    The EMA of the weights (decay ``cfg.ema_decay``) replaces the weights at the end. Returns the loss of every
    epoch (those before a resume included) and the seconds spent.
    """
    dit, device, world = gen.transformer, gen.device, get_world()
    dit.eval()  # no dropout layers; eval keeps diffusers from dropping labels itself (we drop them, seeded)
    ema = copy.deepcopy(dit).requires_grad_(False)
    opt = torch.optim.AdamW(dit.parameters(), lr=cfg.lr, weight_decay=0.0)
    state = _Checkpoints(ckpt, {"dit": dit, "ema": ema}, opt)
    pos = state.pos
    alphas = gen.alphas_cumprod.float()
    null = gen.num_labels
    params, ema_params = list(dit.parameters()), list(ema.parameters())
    steps_per_epoch = math.ceil(len(z0) / cfg.batch_size)
    steps = total_steps(cfg.steps, cfg.epochs, len(z0), cfg.batch_size)
    bar = progress(steps, "train DiT", "step")
    bar.update(min(pos.epoch * steps_per_epoch + pos.batches, steps))
    for epoch in range(pos.epoch, math.ceil(steps / steps_per_epoch)):
        batches = _batches(len(z0), cfg.batch_size, seed, "dit-epoch", epoch)[: steps - epoch * steps_per_epoch]
        skip, total, count, g = state.epoch_start(epoch, generator_for(seed, "dit-noise", epoch))
        for done, idx in enumerate(batches[skip:], start=skip + 1):
            idx = torch.from_numpy(idx)
            x0, y = z0[idx], labels[idx].clone()
            t = torch.randint(0, len(alphas), (len(idx),), generator=g)
            eps = torch.randn(x0.shape, generator=g)
            drop = torch.rand(len(idx), generator=g) < cfg.label_dropout
            y[drop] = null
            rows = world.rows(len(idx))  # every rank drew the whole batch's noise; it trains on its rows
            x0, y, t, eps = x0[rows], y[rows], t[rows], eps[rows]
            a = alphas[t].view(-1, 1, 1, 1)
            zt = forward_noise(x0, a, eps)
            with _autocast(device, precision):
                pred = dit(zt.to(device), timestep=t.to(device), class_labels=y.to(device)).sample
            loss = F.mse_loss(pred.float()[:, : x0.shape[1]], eps.to(device))
            opt.zero_grad(set_to_none=True)
            (loss * (len(rows) * world.size / len(idx))).backward()
            _average_grads(dit, world)
            opt.step()
            step = epoch * steps_per_epoch + done - 1  # global optimizer step
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # EMA warm-up for short trainings
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - decay)
            total += world.sum(loss.item() * len(rows))
            count += len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{total / count:.4f}")
            state.after_batch(g, epoch, done, len(batches), total, count)
        state.after_epoch(g, epoch, total / count)
    bar.close()
    dit.load_state_dict(ema.state_dict())
    return pos.losses, state.seconds()


def train_small(cfg: Config, ds: ImageSet, device: torch.device, path: Path,
                provenance: dict[str, Any]) -> dict[str, Any]:
    """Train the small generator of ``cfg`` on ``ds`` and write it to ``path`` (rank 0; diffusers layout, renamed
    into place): the VAE on all but a held-out slice, its scaling factor (1 / std of the latents, as the SD VAE's
    0.18215 was chosen), then the DiT on the scaled latents. Resumable from ``path``.partial, inside an epoch too;
    returns the quality readout (held-out PSNR, steps, final losses), also stored in the generator's provenance
    file."""
    from d3hr.generator.model import build_small, save_generator

    g, d, world = cfg.generator, cfg.data, get_world()
    partial = path.with_name(path.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(g.seed)
    gen = build_small(len(ds.classes), ds.channels, d.image_size, g.vae.block_out_channels, g.vae.latent_channels,
                      g.vae.layers_per_block, g.dit.num_layers, g.dit.num_attention_heads, g.dit.attention_head_dim,
                      g.dit.patch_size).to(device)
    fit_idx, heldout = heldout_split(len(ds), g.seed)
    vae_losses, t_vae = train_vae(gen, ds, g.vae, d.image_size, d.fit, g.seed, g.precision,
                                  partial / "vae.ckpt.safetensors", train_idx=fit_idx)
    psnr = reconstruction_psnr(gen, ds, heldout, d.image_size, d.fit) if len(heldout) else None
    z = encode_dataset(gen, ds, d.image_size, d.fit)  # (N, c, h, w) unscaled
    scale = 1.0 / float(z.float().std())
    gen.vae.register_to_config(scaling_factor=scale)
    dit_losses, t_dit = train_dit(gen, z * scale, torch.as_tensor(ds.targets), g.dit, g.seed, g.precision,
                                  partial / "dit.ckpt.safetensors")
    quality = {"vae_psnr_db": None if psnr is None else round(psnr, 2), "vae_heldout_images": len(heldout),
               "vae_steps": total_steps(g.vae.steps, g.vae.epochs, len(fit_idx), g.vae.batch_size),
               "dit_steps": total_steps(g.dit.steps, g.dit.epochs, len(ds), g.dit.batch_size),
               "vae_final_mse": vae_losses[-1] if vae_losses else None,
               "dit_final_loss": dit_losses[-1] if dit_losses else None}
    gen.info = {**provenance, "classes": ds.classes, "vae": asdict(g.vae), "dit": asdict(g.dit), "seed": g.seed,
                "scaling_factor": scale, "vae_mse_per_epoch": vae_losses, "dit_loss_per_epoch": dit_losses,
                "quality": quality, "seconds": {"vae": round(t_vae, 1), "dit": round(t_dit, 1)},
                "kernels": kernels(device)}
    if world.is_main:
        out = path.with_name(path.name + ".out")
        shutil.rmtree(out, ignore_errors=True)
        save_generator(gen, out)
        replace_dir(out, path)
        shutil.rmtree(partial, ignore_errors=True)
    return quality
