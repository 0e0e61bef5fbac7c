import pytest
import torch

from d3hr.diffusion import DDIMGrid, ddim_invert, ddim_sample, ddim_step, make_alphas_cumprod
from d3hr.diffusion.loops import ddim_walk
from d3hr.generator.model import SMALL_SCHEDULE


def test_alphas_cumprod_matches_dit_linear_schedule():
    ac = make_alphas_cumprod(**SMALL_SCHEDULE)
    assert ac.dtype == torch.float64 and ac.shape == (1000,)
    assert ac[0].item() == pytest.approx(1 - 1e-4)
    assert ac[1].item() == pytest.approx((1 - 1e-4) * (1 - (1e-4 + (0.02 - 1e-4) / 999)))
    assert ac[-1].item() == pytest.approx(4.035e-5, rel=1e-3)  # golden value of DiT's schedule


def test_grid_is_leading_spacing_and_paths_mirror():
    grid = DDIMGrid.create(make_alphas_cumprod(**SMALL_SCHEDULE), 50)
    assert grid.timesteps[:3].tolist() == [0, 20, 40] and grid.timesteps[-1] == 980
    up, down = grid.inversion_path(31), grid.sampling_path(31)
    assert len(up) == len(down) == 31
    assert up[-1][2] == down[0][1]  # sampling starts at the level inversion reached
    assert down[-1][2] == up[0][1]  # and ends where inversion started
    assert [a for _, a, _ in up] == [b for _, _, b in reversed(down)]


def test_ddim_step_golden_values():
    """Constants computed apart from the code under test, at 40 digits with Python's decimal module: from level 0.9
    to 0.5, z0 = (1 - sqrt(0.1) 0.5) / sqrt(0.9) = 0.88743..., out = sqrt(0.5) (z0 + 0.5) = 0.98105... (and for
    diffusers' DDIMScheduler.step see tests/diffusion/test_ddim_diffusers.py)."""
    z, eps = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 0.25], dtype=torch.float64)
    golden = torch.tensor([0.98105825289544574027, -1.37286085480210187687], dtype=torch.float64)
    torch.testing.assert_close(ddim_step(z, eps, 0.9, 0.5), golden, rtol=1e-15, atol=0)


def test_round_trip_exact_for_a_constant_eps():
    """Each inversion step is undone exactly by the matching sampling step when eps is the same at both levels:
    the round-trip error of a real model comes only from eps changing between neighbouring grid levels."""
    grid = DDIMGrid.create(make_alphas_cumprod(**SMALL_SCHEDULE), 50)
    const = torch.randn(4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def eps_fn(z, t, labels):
        return const.expand_as(z)

    z0 = torch.randn(8, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(8, dtype=torch.long)
    zk = ddim_invert(eps_fn, z0, labels, grid, 31)
    torch.testing.assert_close(ddim_sample(eps_fn, zk, labels, grid, 31), z0, atol=1e-10, rtol=0)
    off = ddim_walk(eps_fn, zk, labels, grid.sampling_path(32))
    assert float((off - z0).norm() / z0.norm()) > 0.05


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_round_trip_with_dit_and_off_by_one(tiny_generator, guidance):
    """Invert K=31 of 50 steps then sample back with a fixed (seeded, untrained) DiT.

    Measured on this CPU: relative error 0.074 (guidance 1) and 0.23 (guidance 4); starting the sampling one grid
    step above where inversion stopped (the authors' off-by-one) gives 0.167 and 0.53.
    """
    g = tiny_generator
    grid = DDIMGrid.create(g.alphas_cumprod, 50)

    def eps_fn(z, t, labels):
        return g.eps(z, t, labels, guidance)

    z0 = torch.randn(16, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % 10
    zk = ddim_invert(eps_fn, z0, labels, grid, 31)
    back = ddim_sample(eps_fn, zk, labels, grid, 31)
    off = ddim_walk(eps_fn, zk, labels, grid.sampling_path(32))
    err = float((back - z0).norm() / z0.norm())
    err_off = float((off - z0).norm() / z0.norm())
    assert err < {1.0: 0.09, 4.0: 0.28}[guidance]
    assert err_off > 2.0 * err
    assert float((zk - z0).norm() / z0.norm()) > 0.5  # inversion really moved the latents
