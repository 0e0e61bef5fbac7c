"""d3hr's DDIM (ddim_step over DDIMGrid) against diffusers' DDIMScheduler and DDIMInverseScheduler, eta = 0.

The grids coincide with diffusers' ``timestep_spacing="leading"`` and ``steps_offset=0`` (the defaults):
timesteps k * (T // N), k = 0..N-1. ``set_alpha_to_one=False`` makes the end of the walk coincide too: d3hr
identifies the clean latent z0 with grid level 0 (t = 0, a = alphas_cumprod[0] = 1 - beta_0), so its K sampling steps
evaluate eps at t_K .. t_1 and stop at level 0; diffusers' last step, at t = 0, goes from alphas_cumprod[0] to
``final_alpha_cumprod``, which with set_alpha_to_one=False is alphas_cumprod[0] again: the identity. With
set_alpha_to_one=True (Stable Diffusion's and DiT's configs) that step goes on to a = 1 (the predicted x0), a step
d3hr does not take; inversion mirrors it (DDIMInverseScheduler's first step, at t = 0, starts from
``initial_alpha_cumprod``). The inverse scheduler's step(eps, t) moves from t - T // N to t; d3hr evaluates that
eps at the level it starts from (t - T // N), as the D3HR authors do, where diffusers' pipelines evaluate it at t:
here both get the same eps, so the tests compare the stepping alone.
"""

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from d3hr.diffusion import DDIMGrid, ddim_invert, ddim_sample, ddim_step, make_alphas_cumprod
from d3hr.generator.model import SMALL_SCHEDULE

SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
GRID = {"timestep_spacing": "leading", "steps_offset": 0, "clip_sample": False}


def _eps_fn(z: torch.Tensor, t: int, labels: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a model: depends on the latent and the timestep."""
    return torch.tanh(z) * (1.0 + t / 1000.0) + 0.1 * torch.cos(torch.arange(z.numel(), dtype=z.dtype)).view_as(z)


def _latents() -> torch.Tensor:
    return torch.randn(3, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("schedule", [SMALL_SCHEDULE, SD_SCHEDULE])
def test_alphas_cumprod_match_diffusers(schedule):
    ours = make_alphas_cumprod(**schedule)
    theirs = DDIMScheduler(**schedule).alphas_cumprod  # float32: the difference is float32 rounding
    torch.testing.assert_close(ours, theirs.double(), rtol=2e-6, atol=0)


@pytest.mark.parametrize("num_steps", [10, 30, 50, 1000])
def test_grid_is_diffusers_leading_grid(num_steps):
    grid = DDIMGrid.create(make_alphas_cumprod(**SMALL_SCHEDULE), num_steps)
    down, up = DDIMScheduler(**SMALL_SCHEDULE, **GRID), DDIMInverseScheduler(**SMALL_SCHEDULE, **GRID)
    down.set_timesteps(num_steps)
    up.set_timesteps(num_steps)
    assert down.timesteps.flip(0).tolist() == grid.timesteps.tolist() == up.timesteps.tolist()


def test_one_step_matches_diffusers_step_to_float64_rounding():
    """With diffusers' scheduler given d3hr's float64 alphas_cumprod, a step is the same arithmetic."""
    ac = make_alphas_cumprod(**SMALL_SCHEDULE)
    sched = DDIMScheduler(**SMALL_SCHEDULE, **GRID)
    sched.set_timesteps(50)
    sched.alphas_cumprod = ac
    z, eps = _latents(), _latents().flip(0)
    for t in (980, 600, 20):
        ours = ddim_step(z, eps, float(ac[t]), float(ac[t - 20]))
        torch.testing.assert_close(ours, sched.step(eps, t, z, eta=0.0).prev_sample, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("schedule", "num_steps", "k"), [(SMALL_SCHEDULE, 50, 31), (SMALL_SCHEDULE, 30, 29),
                                                          (SD_SCHEDULE, 50, 20)])
def test_sampling_matches_ddim_scheduler(schedule, num_steps, k):
    """K steps from level K down to level 0 equal DDIMScheduler.step over timesteps t_K .. t_1, and diffusers' last
    step (t = 0) is the identity with set_alpha_to_one=False."""
    grid = DDIMGrid.create(make_alphas_cumprod(**schedule), num_steps)
    zk, labels = _latents(), torch.zeros(3, dtype=torch.long)
    ours = ddim_sample(_eps_fn, zk, labels, grid, k)
    sched = DDIMScheduler(**schedule, **GRID, set_alpha_to_one=False)
    sched.set_timesteps(num_steps)
    steps = sched.timesteps[num_steps - 1 - k:]  # t_K, ..., t_1, 0
    assert int(steps[0]) == int(grid.timesteps[k])
    z = zk
    for t in steps[:-1].tolist():
        z = sched.step(_eps_fn(z, t, labels), t, z, eta=0.0).prev_sample
    torch.testing.assert_close(ours, z, rtol=2e-5, atol=2e-6)  # diffusers' alphas_cumprod are float32
    last = sched.step(_eps_fn(z, 0, labels), 0, z, eta=0.0).prev_sample
    torch.testing.assert_close(last, z, rtol=1e-6, atol=1e-6)
    one = DDIMScheduler(**schedule, **GRID, set_alpha_to_one=True)
    one.set_timesteps(num_steps)
    eps = _eps_fn(z, 0, labels)
    moved = float((one.step(eps, 0, z, eta=0.0).prev_sample - z).norm() / eps.norm())
    assert moved > 0.5 * (1 - float(grid.alphas[0])) ** 0.5  # the step to a = 1 d3hr does not take: ~sqrt(beta_0) eps


@pytest.mark.parametrize(("schedule", "num_steps", "k"), [(SMALL_SCHEDULE, 50, 31), (SD_SCHEDULE, 25, 24)])
def test_inversion_matches_ddim_inverse_scheduler(schedule, num_steps, k):
    """K steps from level 0 up to level K equal DDIMInverseScheduler.step over timesteps t_1 .. t_K, each given eps
    at the level it starts from; its first step (t = 0) is the identity with set_alpha_to_one=False."""
    grid = DDIMGrid.create(make_alphas_cumprod(**schedule), num_steps)
    z0, labels = _latents(), torch.zeros(3, dtype=torch.long)
    ours = ddim_invert(_eps_fn, z0, labels, grid, k)
    sched = DDIMInverseScheduler(**schedule, **GRID, set_alpha_to_one=False)
    sched.set_timesteps(num_steps)
    ratio = schedule["num_train_timesteps"] // num_steps
    first = sched.step(_eps_fn(z0, 0, labels), 0, z0).prev_sample
    torch.testing.assert_close(first, z0, rtol=1e-6, atol=1e-6)
    z = z0
    for t in sched.timesteps[1:k + 1].tolist():
        z = sched.step(_eps_fn(z, t - ratio, labels), t, z).prev_sample
    torch.testing.assert_close(ours, z, rtol=2e-5, atol=2e-6)
    assert int(sched.timesteps[k]) == int(grid.timesteps[k])
