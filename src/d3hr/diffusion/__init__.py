"""DDIM grid and the deterministic inversion / sampling loops."""

from d3hr.diffusion.ddim import DDIMGrid, ddim_step, forward_noise, make_alphas_cumprod
from d3hr.diffusion.loops import ddim_invert, ddim_invert_levels, ddim_sample

__all__ = ["DDIMGrid", "ddim_invert", "ddim_invert_levels", "ddim_sample", "ddim_step", "forward_noise",
           "make_alphas_cumprod"]
