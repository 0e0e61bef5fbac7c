"""The one place where the noise-prediction model is called step by step: DDIM inversion and sampling."""

from __future__ import annotations

from collections.abc import Callable

import torch

from d3hr.diffusion.ddim import DDIMGrid, ddim_step

# eps_fn(zt (B, C, h, w), timestep, labels (B,)) -> eps (B, C, h, w), guidance already applied.
EpsFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def ddim_walk(eps_fn: EpsFn, z: torch.Tensor, labels: torch.Tensor,
              path: list[tuple[int, float, float]]) -> torch.Tensor:
    """Apply ``ddim_step`` along ``path``, evaluating eps at the current latent; arithmetic in float32 or wider."""
    dtype = z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32
    z = z.to(dtype)
    for t, a_from, a_to in path:
        eps = eps_fn(z, t, labels).to(dtype)
        z = ddim_step(z, eps, a_from, a_to)
    return z


def ddim_invert(eps_fn: EpsFn, z0: torch.Tensor, labels: torch.Tensor, grid: DDIMGrid, k: int) -> torch.Tensor:
    """Map clean latents z0 to grid level k (zK) with K deterministic, class-conditional DDIM inversion steps."""
    return ddim_walk(eps_fn, z0, labels, grid.inversion_path(k))


def ddim_invert_levels(eps_fn: EpsFn, z0: torch.Tensor, labels: torch.Tensor, grid: DDIMGrid,
                       levels: list[int]) -> dict[int, torch.Tensor]:
    """One inversion walk from level 0 to max(levels), keeping the latent at each of ``levels``; the latent at
    level k is the same ``ddim_invert(..., k)`` returns (the walk's first k steps are that walk)."""
    path, out, z = grid.inversion_path(max(levels)), {}, z0
    dtype = z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32
    z = z.to(dtype)
    if 0 in levels:
        out[0] = z
    for k, (t, a_from, a_to) in enumerate(path, start=1):
        z = ddim_step(z, eps_fn(z, t, labels).to(dtype), a_from, a_to)
        if k in levels:
            out[k] = z
    return out


def ddim_sample(eps_fn: EpsFn, zk: torch.Tensor, labels: torch.Tensor, grid: DDIMGrid, k: int) -> torch.Tensor:
    """Map latents at grid level k back to level 0 (z0) with K deterministic DDIM steps."""
    return ddim_walk(eps_fn, zk, labels, grid.sampling_path(k))
