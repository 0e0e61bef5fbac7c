"""DDIM math (Song et al. 2021), as pure functions over ``alphas_cumprod``; nothing here calls a model.

Notation: ``a_t`` = alphas_cumprod[t] (written alpha-bar_t in DDPM, alpha_t in DDIM). The forward marginal is
``z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps`` (DDIM Eq. 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def make_alphas_cumprod(num_train_timesteps: int, beta_start: float, beta_end: float,
                        beta_schedule: str) -> torch.Tensor:
    """Cumulative products of (1 - beta_t) in float64, for the schedules DiT and Stable Diffusion use.

    The same betas as diffusers' schedulers (which compute them in float32; tests/diffusion/test_ddim_diffusers.py).
    A generator's schedule comes from its scheduler config (d3hr.generator.model.generator_schedule; DiT's is
    d3hr.generator.model.SMALL_SCHEDULE).
    """
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    else:
        raise ValueError(f"unsupported beta_schedule '{beta_schedule}' (linear or scaled_linear)")
    return torch.cumprod(1.0 - betas, dim=0)


@dataclass(frozen=True)
class DDIMGrid:
    """The DDIM sub-sequence of training timesteps: ``timesteps[k] = k * (T // N)`` for k = 0..N-1.

    Grid level k holds latents at noise level ``a[k] = alphas_cumprod[timesteps[k]]``; the clean latent z0 is
    identified with level 0 (t = 0, a = 1 - beta_0). Inversion walks levels 0 -> K, sampling walks K -> 0 on the
    same grid, so sampling starts exactly where inversion stopped.
    """

    timesteps: torch.Tensor  # (N,) int64
    alphas: torch.Tensor  # (N,) float64, alphas_cumprod at the grid timesteps

    @classmethod
    def create(cls, alphas_cumprod: torch.Tensor, num_steps: int) -> DDIMGrid:
        total = len(alphas_cumprod)
        if not 1 <= num_steps <= total:
            raise ValueError(f"num_steps must be in [1, {total}], got {num_steps}")
        timesteps = torch.arange(num_steps, dtype=torch.long) * (total // num_steps)
        return cls(timesteps, alphas_cumprod.to(torch.float64)[timesteps])

    def inversion_path(self, k: int) -> list[tuple[int, float, float]]:
        """(timestep to evaluate eps at, a_from, a_to) for each step from level 0 up to level k."""
        return [(int(self.timesteps[i]), float(self.alphas[i]), float(self.alphas[i + 1])) for i in range(k)]

    def sampling_path(self, k: int) -> list[tuple[int, float, float]]:
        """(timestep to evaluate eps at, a_from, a_to) for each step from level k down to level 0."""
        return [(int(self.timesteps[i]), float(self.alphas[i]), float(self.alphas[i - 1])) for i in range(k, 0, -1)]


def ddim_step(z: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """One deterministic DDIM move (eta = 0, DDIM Eq. 12) of ``z`` from level ``a_from`` to level ``a_to``.

    z0_pred = (z - sqrt(1 - a_from) eps) / sqrt(a_from);  z_to = sqrt(a_to) z0_pred + sqrt(1 - a_to) eps.
    Going to a noisier level (a_to < a_from) with eps taken at the lower level is DDIM inversion.
    """
    z0_pred = (z - (1.0 - a_from) ** 0.5 * eps) / a_from**0.5
    return a_to**0.5 * z0_pred + (1.0 - a_to) ** 0.5 * eps


def forward_noise(z0: torch.Tensor, alpha: float | torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The forward marginal at level ``alpha`` (DDIM Eq. 4): sqrt(alpha) z0 + sqrt(1 - alpha) eps.

    ``alpha`` is a float or a tensor broadcastable to z0 (one level per sample in training).
    """
    return alpha**0.5 * z0 + (1.0 - alpha) ** 0.5 * eps
