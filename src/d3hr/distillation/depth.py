"""The inversion depth K chosen from the data (``diffusion.inversion_steps=auto``).

D3HR inverts to a level where each class is close to Gaussian; the paper picks K by a grid search over accuracy.
With K = auto, one inversion pass walks to the deepest of ``diffusion.auto_levels`` and streams each class's
moments at every candidate level on the way (the walk passes through them anyway, so the only extra cost is the
steps beyond the level finally chosen). The normality diagnostics of d3hr.distillation.moments are computed at each
level, and the rule is:

    K = the smallest candidate level L_i such that no deeper candidate's share of normal (class, dimension) pairs
        (D'Agostino-Pearson K^2, p > 0.05) exceeds L_i's by more than ``diffusion.auto_rise`` (default 0.02),

i.e. the level after which inverting deeper stops making the classes more Gaussian. Deeper levels also move the
latents further from the data the generator reconstructs, which is why the smallest level of the plateau is
taken and not the most normal one. The share depends on how many images were inverted (K^2 gains power with n),
so the levels are compared on the same images; with fewer than 20 images in every class no share can be computed
and the deepest level is taken, with a note.
"""

from __future__ import annotations

import math


def choose_level(levels: list[int], share_normal: list[float], rise: float) -> int:
    """The rule of the module docstring over increasing ``levels`` and their ``share_normal``."""
    if len(levels) != len(share_normal) or not levels:
        raise ValueError("one share per level")
    if any(math.isnan(s) for s in share_normal):
        return levels[-1]
    for i, level in enumerate(levels):
        if max(share_normal[i:]) - share_normal[i] <= rise:
            return level
    return levels[-1]
