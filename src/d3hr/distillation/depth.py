"""The inversion depth K chosen from the data (``diffusion.inversion_steps=auto``).

D3HR inverts to a level where each class is close to Gaussian; the paper picks K by a grid search over accuracy.
With K = auto, one inversion pass walks to the deepest of ``diffusion.auto_levels`` (by default 0.2 to 0.8 of the
DDIM grid: d3hr.config.auto_levels) and streams each class's moments at every candidate level on the way (the walk
passes through them anyway, so the only extra cost is the steps beyond the level finally chosen). The rule reads
the mean |skewness| over (class, dimension) pairs at each level, s(L), and takes

    K = the smallest candidate level L with s(L0) - s(L) >= reach * (s(L0) - min_L' s(L')),

the first level that achieves ``diffusion.auto_reach`` (default 0.9) of the reduction in skewness that any
candidate achieves over the shallowest one L0: deeper inversion stops making the classes more symmetric, while it
moves the latents further from the data the generator reconstructs (the paper's accuracy falls again when K is too
large). Skewness is the non-Gaussian moment group sampling matches, and its mean absolute value is an effect size:
unlike the share of dimensions that pass a normality test (D'Agostino K^2), which the first version of this rule
read, it does not depend on how many images were inverted. On Fashion-MNIST with all 6,000 images per class the
K^2 test rejects almost every dimension at every level (3-4% pass) and that rule fell to the shallowest level; on
the ~360 images per class of the default subsample it chose K = 20, where this rule chooses 20 in both cases.
"""

from __future__ import annotations

import math


def choose_level(levels: list[int], mean_abs_skewness: list[float], reach: float) -> int:
    """The rule of the module docstring over increasing ``levels`` and their mean |skewness|."""
    if len(levels) != len(mean_abs_skewness) or not levels:
        raise ValueError("one value per level")
    s = mean_abs_skewness
    if any(math.isnan(v) for v in s):
        return levels[-1]
    gain = s[0] - min(s)
    for level, value in zip(levels, s):
        if s[0] - value >= reach * gain - 1e-12:
            return level
    return levels[-1]
