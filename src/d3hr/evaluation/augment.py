"""Batched, seeded training augmentation: RandomResizedCrop (+ horizontal flip) and CutMix.

Every random number comes from a ``torch.Generator`` passed in, so a seed fixes the whole augmentation stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CROP_ATTEMPTS = 10  # as torchvision's RandomResizedCrop.get_params


@dataclass(frozen=True)
class Augment:
    """RandomResizedCrop to ``size`` with ``scale`` and aspect ``ratio``, optional flip, optional CutMix."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    cutmix: bool = True


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               gen: torch.Generator) -> torch.Tensor:
    """Integer crop boxes (top, left, h, w), (n, 4), drawn as torchvision's RandomResizedCrop draws them:
    area share uniform in ``scale``, log aspect uniform in ``ratio``, the first of 10 attempts that fits, else a
    center crop clamped to ``ratio``."""
    area = height * width
    share = torch.empty(n, CROP_ATTEMPTS).uniform_(*scale, generator=gen)
    log_r = torch.empty(n, CROP_ATTEMPTS).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = log_r.exp()
    w = (area * share * aspect).sqrt().round().long()  # (n, attempts)
    h = (area * share / aspect).sqrt().round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1)  # first fitting attempt (0 when none fits; masked below)
    ok = fits.any(1)
    w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
    # Fallback: the whole image, cropped centrally to the nearest allowed aspect ratio.
    in_ratio = width / height
    fw, fh = (width, height) if ratio[0] <= in_ratio <= ratio[1] else \
        ((width, round(width / ratio[0])) if in_ratio < ratio[0] else (round(height * ratio[1]), height))
    w, h = torch.where(ok, w, fw), torch.where(ok, h, fh)
    u = torch.rand(n, 2, generator=gen)
    top = torch.where(ok, (u[:, 0] * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(ok, (u[:, 1] * (width - w + 1)).long(), (width - w) // 2)
    return torch.stack([top, left, h, w], 1)


def _source_coords(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel-index coordinates, (B, size), that bilinear resizing of [start, start + length) to ``size`` samples:
    (o + 0.5) * length / size - 0.5 past ``start``, clamped to the crop as F.interpolate clamps to its input."""
    o = (torch.arange(size, device=start.device) + 0.5) / size  # (size,)
    coords = start[:, None] + o[None, :] * length[:, None] - 0.5
    return torch.minimum(torch.maximum(coords, start[:, None]), (start + length - 1)[:, None])


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor) -> torch.Tensor:
    """Crop each image of (B, C, H, W) to its box, resize bilinearly to (size, size) and mirror where ``flip``:
    the same numbers as cropping and then F.interpolate(mode='bilinear'), for a whole batch in one grid_sample."""
    b, _, height, width = x.shape
    top, left, h, w = boxes.to(x.device, torch.float32).unbind(1)
    xs, ys = _source_coords(left, w, size), _source_coords(top, h, size)  # (B, size) each
    xs = torch.where(flip.to(x.device)[:, None], xs.flip(1), xs)
    # grid_sample's normalised coordinates (align_corners=False): pixel i has its center at (2i + 1) / n - 1.
    gx, gy = (2 * xs + 1) / width - 1, (2 * ys + 1) / height - 1
    grid = torch.stack([gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B, C, size, size)


def cutmix(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al., 2019) with lambda ~ Beta(1, 1) = U(0, 1): paste one box from a permuted batch.

    Returns the mixed batch, the permutation and lambda corrected to the pasted area (the share of the original).
    """
    b, _, height, width = x.shape
    perm = torch.randperm(b, generator=gen)
    lam, cy, cx = torch.rand(3, generator=gen).tolist()
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = int(cy * height), int(cx * width)
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm.to(x.device), :, y0:y1, x0:x1]
    return mixed, perm, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def augment_batch(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                                 float]:
    """Crop, flip and (if ``aug.cutmix``) CutMix a float batch; returns (images, permutation or None, lambda)."""
    boxes = crop_boxes(len(x), x.shape[2], x.shape[3], aug.scale, aug.ratio, gen)
    flip = torch.rand(len(x), generator=gen) < 0.5 if aug.flip else torch.zeros(len(x), dtype=torch.bool)
    x = resized_crop(x, boxes, aug.size, flip)
    if not aug.cutmix:
        return x, None, 1.0
    return cutmix(x, gen)
