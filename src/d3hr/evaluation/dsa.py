"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021) as the DC / DSA evaluation uses it.

Written from the definitions in the DSA paper and the parameters of the authors' ``ParamDiffAug`` (repository
VICO-UoE/DatasetCondensation, ``utils.py``): per sample,

- ``color``: brightness x + (u - 1/2) * 1.0, then saturation (x - mean_c x) * 2u + mean_c x (mean over channels; the
  identity for one channel), then contrast (x - mean x) * (u + 1/2) + mean x (mean over the whole image);
- ``crop``: an integer translation by up to round(1/8 of the side) pixels each way, zeros filling what moves in;
- ``cutout``: a zeroed square of half the side, centre uniform over the image (clipped at the border);
- ``flip``: horizontal mirror with probability 1/2;
- ``scale``: x and y scaled independently by s ~ U(1/1.2, 1.2) about the centre (bilinear, zeros outside);
- ``rotate``: rotation by U(-15, 15) degrees about the centre (bilinear, zeros outside);

with u ~ U(0, 1) drawn per sample. Mode ``single`` (the authors' default 'S') applies one op, drawn uniformly from
the strategy per batch, to the whole batch; mode ``all`` applies every op in order. Evaluation is not Siamese: each
image draws its own parameters. All randomness comes from the ``torch.Generator`` passed in (CPU), so a seed fixes
the stream on any device. Inputs are assumed normalised to zero mean, unit std per channel (as DC normalises).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The authors' evaluation strategies (DatasetCondensation readme): flip is left out for digit datasets.
STRATEGY = "color_crop_cutout_flip_scale_rotate"
STRATEGY_NO_FLIP = "color_crop_cutout_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    """The magnitudes of DSA's ops (the values of the authors' ParamDiffAug)."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


def strategy_for(flip: bool) -> str:
    """DSA's evaluation strategy: with flip, or without it (digits: a mirrored digit is not a digit)."""
    return STRATEGY if flip else STRATEGY_NO_FLIP


def _u(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One U(0, 1) per sample, shaped (B, 1, 1, 1) on x's device."""
    return torch.rand(len(x), generator=gen).to(x.device, x.dtype).view(-1, 1, 1, 1)


def color(x: torch.Tensor, p: DSAParams, gen: torch.Generator) -> torch.Tensor:
    """Brightness, saturation and contrast jitter, in that order."""
    x = x + (_u(x, gen) - 0.5) * p.brightness
    m = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    x = (x - m) * (_u(x, gen) * p.saturation) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - m) * (_u(x, gen) + p.contrast) + m


def crop(x: torch.Tensor, p: DSAParams, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by integers in [-s, s] (s = round(side * ratio_crop_pad)), zero fill."""
    b, _, h, w = x.shape
    sy, sx = int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)
    ty = torch.randint(-sy, sy + 1, (b,), generator=gen).to(x.device)
    tx = torch.randint(-sx, sx + 1, (b,), generator=gen).to(x.device)
    padded = F.pad(x, (sx, sx, sy, sy))  # (B, C, H + 2sy, W + 2sx)
    rows = (torch.arange(h, device=x.device)[None, :] + sy + ty[:, None])  # (B, H): source rows
    cols = (torch.arange(w, device=x.device)[None, :] + sx + tx[:, None])  # (B, W)
    idx = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, p: DSAParams, gen: torch.Generator) -> torch.Tensor:
    """Zero a (side * ratio_cutout)-square per image whose centre is uniform over the image."""
    b, _, h, w = x.shape
    ch, cw = int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b,), generator=gen).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b,), generator=gen).to(x.device)
    y = torch.arange(h, device=x.device)[None, :] - (cy - ch // 2)[:, None]  # (B, H): offset into the square
    xx = torch.arange(w, device=x.device)[None, :] - (cx - cw // 2)[:, None]
    inside = ((y >= 0) & (y < ch))[:, :, None] & ((xx >= 0) & (xx < cw))[:, None, :]  # (B, H, W)
    return x * (~inside)[:, None].to(x.dtype)


def flip(x: torch.Tensor, p: DSAParams, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image horizontally with probability prob_flip."""
    return torch.where(_u(x, gen) < p.prob_flip, x.flip(3), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def scale(x: torch.Tensor, p: DSAParams, gen: torch.Generator) -> torch.Tensor:
    """Scale x and y sampling coordinates independently by U(1/ratio_scale, ratio_scale)."""
    lo, hi = 1.0 / p.ratio_scale, p.ratio_scale
    s = torch.rand(2, len(x), generator=gen) * (hi - lo) + lo  # (2, B): sx, sy
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = s[0], s[1]
    return _affine(x, theta)


def rotate(x: torch.Tensor, p: DSAParams, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image by U(-ratio_rotate, ratio_rotate) degrees."""
    a = (torch.rand(len(x), generator=gen) - 0.5) * 2 * p.ratio_rotate * math.pi / 180
    cos, sin = a.cos(), a.sin()
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(a)], 1),
                         torch.stack([sin, cos, torch.zeros_like(a)], 1)], 1)  # (B, 2, 3)
    return _affine(x, theta)


OPS: dict[str, Callable[[torch.Tensor, DSAParams, torch.Generator], torch.Tensor]] = {
    "color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale, "rotate": rotate}


def parse_strategy(strategy: str) -> list[str]:
    """'color_crop_...' -> ['color', 'crop', ...]; unknown names raise ValueError."""
    names = [s for s in strategy.split("_") if s]
    unknown = [s for s in names if s not in OPS]
    if unknown:
        raise ValueError(f"unknown DSA op(s) {unknown} in {strategy!r}; known: {', '.join(OPS)}")
    return names


def dsa_augment(x: torch.Tensor, strategy: str, gen: torch.Generator, mode: str = "single",
                params: DSAParams = DSAParams()) -> torch.Tensor:
    """Augment a float batch (B, C, H, W) with ``strategy``: one op drawn per batch (``mode='single'``, DSA's
    evaluation) or every op in order (``mode='all'``). Per-sample parameters, all drawn from ``gen``."""
    names = parse_strategy(strategy)
    if not names:
        return x
    if mode == "single":
        names = [names[int(torch.randint(len(names), (1,), generator=gen))]]
    elif mode != "all":
        raise ValueError(f"DSA mode must be single or all, got {mode!r}")
    for name in names:
        x = OPS[name](x, params, gen)
    return x.contiguous()
