"""Streaming, mergeable per-class moments up to order 4 in float64 (Chan et al. 1979; Pebay 2008).

A ``Moments`` holds, per class c and dimension d, the count n, the mean and the central sums
M_p = sum (x - mean)^p for p = 2, 3, 4. Two of them merge exactly (up to float64 rounding), so batches and
processes can be folded in any grouping; d3hr merges them in a fixed order so results are reproducible bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Moments:
    n: torch.Tensor  # (C,) float64 counts
    mean: torch.Tensor  # (C, D) float64
    m2: torch.Tensor  # (C, D)
    m3: torch.Tensor  # (C, D)
    m4: torch.Tensor  # (C, D)

    @classmethod
    def zeros(cls, num_classes: int, dim: int) -> Moments:
        z = torch.zeros(num_classes, dim, dtype=torch.float64)
        return cls(torch.zeros(num_classes, dtype=torch.float64), z.clone(), z.clone(), z.clone(), z.clone())

    @classmethod
    def from_batch(cls, x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Moments:
        """Moments of one batch: x (B, D) any float dtype, labels (B,) in [0, num_classes)."""
        x = x.to(torch.float64).reshape(len(x), math.prod(x.shape[1:]))
        labels = labels.to(torch.long).cpu()
        x = x.cpu()
        out = cls.zeros(num_classes, x.shape[1])
        out.n.index_add_(0, labels, torch.ones(len(labels), dtype=torch.float64))
        safe_n = out.n.clamp(min=1.0)[:, None]
        out.mean.index_add_(0, labels, x)
        out.mean /= safe_n
        d = x - out.mean[labels]  # (B, D) deviations from each sample's class mean
        d2 = d * d
        out.m2.index_add_(0, labels, d2)
        out.m3.index_add_(0, labels, d2 * d)
        out.m4.index_add_(0, labels, d2 * d2)
        return out

    def merge(self, other: Moments) -> Moments:
        """Combine two disjoint samples' moments (pairwise update formulas for central sums)."""
        na, nb = self.n[:, None], other.n[:, None]
        n = na + nb
        safe = n.clamp(min=1.0)
        delta = other.mean - self.mean
        mean = self.mean + delta * nb / safe
        m2 = self.m2 + other.m2 + delta**2 * na * nb / safe
        m3 = (self.m3 + other.m3 + delta**3 * na * nb * (na - nb) / safe**2
              + 3.0 * delta * (na * other.m2 - nb * self.m2) / safe)
        m4 = (self.m4 + other.m4 + delta**4 * na * nb * (na * na - na * nb + nb * nb) / safe**3
              + 6.0 * delta**2 * (na * na * other.m2 + nb * nb * self.m2) / safe**2
              + 4.0 * delta * (na * other.m3 - nb * self.m3) / safe)
        return Moments(n[:, 0], mean, m2, m3, m4)

    def std(self) -> torch.Tensor:
        """Unbiased standard deviation, (C, D)."""
        return (self.m2 / (self.n[:, None] - 1.0)).sqrt()

    def skewness(self) -> torch.Tensor:
        """Fisher skewness g1 = sqrt(n) M3 / M2^1.5 (scipy.stats.skew with bias=True), (C, D)."""
        n = self.n[:, None]
        return n.sqrt() * self.m3 / self.m2.pow(1.5)

    def excess_kurtosis(self) -> torch.Tensor:
        """Fisher excess kurtosis g2 = n M4 / M2^2 - 3 (scipy.stats.kurtosis with bias=True), (C, D)."""
        n = self.n[:, None]
        return n * self.m4 / self.m2**2 - 3.0

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.n": self.n, f"{prefix}.mean": self.mean, f"{prefix}.m2": self.m2,
                f"{prefix}.m3": self.m3, f"{prefix}.m4": self.m4}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> Moments:
        return cls(*(tensors[f"{prefix}.{k}"].to(torch.float64) for k in ("n", "mean", "m2", "m3", "m4")))

    def compact(self) -> tuple[torch.Tensor, ...]:
        """Only the classes with samples: (classes (k,), n (k,), mean, m2, m3, m4 (k, D)), for sending between
        processes; ``expand`` restores the same bits (absent classes are exact zeros)."""
        idx = (self.n > 0).nonzero().squeeze(1)
        return (idx, self.n[idx], self.mean[idx], self.m2[idx], self.m3[idx], self.m4[idx])

    @classmethod
    def expand(cls, compact: tuple[torch.Tensor, ...], num_classes: int) -> Moments:
        """The dense moments of ``compact()`` output."""
        idx, *rows = compact
        out = cls.zeros(num_classes, rows[1].shape[1])
        for full, part in zip((out.n, out.mean, out.m2, out.m3, out.m4), rows):
            full[idx] = part
        return out


def normaltest_pvalues(skew: torch.Tensor, kurt: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """D'Agostino-Pearson K^2 p-values from biased skewness g1, excess kurtosis g2 and sample size n.

    The same statistic as scipy.stats.normaltest, computed from the moments alone (D'Agostino 1970 for the
    skewness z-score; Anscombe & Glynn 1983 for the kurtosis z-score). Needs n >= 20 for a meaningful answer.
    """
    skew, kurt = skew.to(torch.float64), kurt.to(torch.float64)
    n = n.to(torch.float64).reshape(-1, *([1] * (skew.dim() - 1))).expand_as(skew)
    # Skewness test.
    y = skew * ((n + 1) * (n + 3) / (6.0 * (n - 2))).sqrt()
    beta2 = 3.0 * (n * n + 27 * n - 70) * (n + 1) * (n + 3) / ((n - 2) * (n + 5) * (n + 7) * (n + 9))
    w2 = -1 + (2 * (beta2 - 1)).sqrt()
    delta = 1 / (0.5 * w2.log()).sqrt()
    alpha = (2 / (w2 - 1)).sqrt()
    z_skew = delta * torch.asinh(y / alpha)
    # Kurtosis test (on b2 = g2 + 3).
    b2 = kurt + 3.0
    e = 3.0 * (n - 1) / (n + 1)
    var_b2 = 24.0 * n * (n - 2) * (n - 3) / ((n + 1) ** 2 * (n + 3) * (n + 5))
    x = (b2 - e) / var_b2.sqrt()
    sqrt_beta1 = 6.0 * (n * n - 5 * n + 2) / ((n + 7) * (n + 9)) * (6.0 * (n + 3) * (n + 5)
                                                                        / (n * (n - 2) * (n - 3))).sqrt()
    a = 6.0 + 8.0 / sqrt_beta1 * (2.0 / sqrt_beta1 + (1 + 4.0 / sqrt_beta1**2).sqrt())
    term1 = 1 - 2 / (9.0 * a)
    denom = 1 + x * (2 / (a - 4.0)).sqrt()
    term2 = torch.sign(denom) * ((1 - 2.0 / a) / denom.abs()).pow(1 / 3.0)
    z_kurt = (term1 - term2) / (2 / (9.0 * a)).sqrt()
    k2 = z_skew**2 + z_kurt**2
    return torch.exp(-k2 / 2)  # chi-squared survival function with 2 degrees of freedom


def normality_summary(m: Moments, alpha: float = 0.05) -> dict[str, float]:
    """Mean |skewness|, mean |excess kurtosis| and the share of (class, dimension) pairs passing K^2 at ``alpha``."""
    keep = m.n >= 20
    if not bool(keep.any()):
        return {"mean_abs_skewness": math.nan, "mean_abs_excess_kurtosis": math.nan, "share_normal": math.nan}
    skew, kurt = m.skewness()[keep], m.excess_kurtosis()[keep]
    p = normaltest_pvalues(skew, kurt, m.n[keep])
    return {"mean_abs_skewness": float(skew.abs().mean()), "mean_abs_excess_kurtosis": float(kurt.abs().mean()),
            "share_normal": float((p > alpha).double().mean())}
