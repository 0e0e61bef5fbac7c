"""Statistics for comparing methods: paired t-intervals and DD-Ranking's label- and augmentation-robust scores.

DD-Ranking (Li et al., 2025; NUS-HPC-AI-Lab/DD-Ranking, README "Label-Robust Score" / "Augmentation-Robust Score"),
with accuracies as fractions in [0, 1]:

- hard label recovery   HLR = Acc(real, hard) - Acc(syn, hard)        (real: the whole training set)
- improvement over random  IOR = Acc(syn, any) - Acc(rdm, any)        (rdm: a random real subset of the same size,
                                                                       trained under the same labels and recipe)
- LRS = (exp(alpha) - exp(-1)) / (e - exp(-1)),  alpha = w * IOR - (1 - w) * HLR,  w = 0.5
- ARS = (exp(beta) - exp(-1)) / (e - exp(-1)),
        beta = g * (Acc(syn, aug) - Acc(rdm, aug)) + (1 - g) * (Acc(syn, no aug) - Acc(rdm, no aug)),  g = 0.5

DD-Ranking computes the scores per evaluation round and averages them; ``compare`` does the same per seed.

Whether a set-quality readout tracks accuracy: Spearman's rank correlation with a Fisher-z interval
(``spearman_interval``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LRS_WEIGHT = 0.5  # DD-Ranking's default w
ARS_WEIGHT = 0.5  # DD-Ranking's default gamma (ars_lambda)


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences with a two-sided t-interval."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        """True only when the interval excludes 0."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def paired_t_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Interval for mean(a - b) over pairs: mean(d) +- t_{(1+level)/2, n-1} * sd(d) / sqrt(n), sd with ddof 1.
    With one pair the interval is unbounded."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("no pairs")
    mean = float(d.mean())
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class Correlation:
    """A rank correlation with a two-sided interval."""

    rho: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        """True only when the interval excludes 0."""
        return self.low > 0 or self.high < 0


SPEARMAN_Z_VARIANCE = 1.06  # Fieller, Hartley & Pearson (Biometrika 1957): var(atanh(rho_s)) ~ 1.06 / (n - 3)


def spearman_interval(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> Correlation | None:
    """Spearman's rho of paired values (ties get average ranks) with the interval
    tanh(atanh(rho) +- z_{(1+level)/2} * sqrt(1.06 / (n - 3))): Fisher's z with Fieller, Hartley and Pearson's
    variance for rank correlations. None when it is undefined (fewer than 4 pairs, or either side constant).
    rho = +-1 gives the degenerate interval [rho, rho]."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values needed, got shapes {a.shape} and {b.shape}")
    n = len(a)
    if n < 4 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    rho = float(stats.spearmanr(a, b).statistic)  # Pearson's r of the (average) ranks
    if abs(rho) >= 1.0:
        return Correlation(math.copysign(1.0, rho), math.copysign(1.0, rho), math.copysign(1.0, rho), n)
    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(SPEARMAN_Z_VARIANCE / (n - 3))
    z = math.atanh(rho)
    return Correlation(rho, math.tanh(z - half), math.tanh(z + half), n)


def unit_score(x: float) -> float:
    """DD-Ranking's map of a score in [-1, 1] to [0, 1]: (e^x - e^-1) / (e - e^-1)."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def hlr(real_hard: float, syn_hard: float) -> float:
    """Hard label recovery: Acc(real, hard) - Acc(syn, hard)."""
    return real_hard - syn_hard


def ior(syn: float, rdm: float) -> float:
    """Improvement over random: Acc(syn, any) - Acc(rdm, any) under the same labels and recipe."""
    return syn - rdm


def lrs(real_hard: float, syn_hard: float, syn: float, rdm: float, w: float = LRS_WEIGHT) -> float:
    """Label-robust score of one round: unit_score(w * IOR - (1 - w) * HLR)."""
    return unit_score(w * ior(syn, rdm) - (1 - w) * hlr(real_hard, syn_hard))


def ars(syn_aug: float, rdm_aug: float, syn_naug: float, rdm_naug: float, g: float = ARS_WEIGHT) -> float:
    """Augmentation-robust score of one round: unit_score(g * (syn_aug - rdm_aug) + (1 - g) * (syn_naug - rdm_naug))."""
    return unit_score(g * (syn_aug - rdm_aug) + (1 - g) * (syn_naug - rdm_naug))
