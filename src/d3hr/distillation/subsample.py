"""Which training images the invert stage maps: each class in a seeded random order, round by round, until the
standard errors of its streamed moments are small against what group sampling can resolve at the run's IPC.

The rule. Group sampling (DESIGN.md section 2) draws groups of IPC latents x = mu + sigma * z with z ~ N(0, I) and
compares each group's mean, std and skewness with the class's. Over the candidates, a group's moments scatter
around the class's by their large-sample standard errors, which is the finest difference the search resolves:

    mean: sigma / sqrt(IPC)        std: sigma / sqrt(2 IPC)        skewness: sqrt(6 / IPC)

(the std's for Gaussian draws, whose kurtosis is 3). The class's own moments, streamed from n inverted images,
carry the standard errors

    mean: s / sqrt(n)              std: s sqrt((kappa - 1) / (4 n))        skewness: sqrt(6 / n)

with kappa = m4 / m2^2 the data's kurtosis in that dimension (delta method on the sample variance); the skewness's
is the normal-theory value, which the inverted domain approaches (the premise of D3HR), since a streamed sixth
moment would be needed for the general one. The ratios, per class, with the std's averaged over dimensions as
an RMS:

    r_mu = sqrt(IPC / n)      r_sigma = sqrt(mean_d (kappa_d - 1) / 2 * IPC / n)      r_gamma = sqrt(IPC / n)

A class stops after the first round at whose end max(r_mu, r_sigma, r_gamma) <= tolerance, or when its images
(or the per-class cap) run out. For a Gaussian class that is n >= IPC / tolerance^2 (250 images at IPC 10 and
tolerance 0.2, 1,250 at IPC 50); heavier tails than normal need more. The rule is checked only at round ends
(``check_every`` images per class), so where a class stops does not depend on the batch size or the number of
processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from d3hr.distillation.moments import Moments
from d3hr.utils.seeding import generator_for

ALL = "all"


@dataclass(frozen=True)
class Plan:
    """The visiting order of the invert stage: ``orders[c]`` the training indices of class c in the order they are
    inverted (already cut to the cap), ``round_size`` images per class per round (None: one round of everything),
    ``tolerance`` the rule's (None: no rule)."""

    orders: list[np.ndarray]
    round_size: int | None
    tolerance: float | None
    ipc: int

    @property
    def rounds(self) -> int:
        if self.round_size is None:
            return 1
        return max(math.ceil(len(o) / self.round_size) for o in self.orders)

    @property
    def max_images(self) -> int:
        return int(sum(len(o) for o in self.orders))

    def round_indices(self, r: int, active: list[int]) -> np.ndarray:
        """The training indices inverted in round ``r`` by the ``active`` classes, class by class."""
        if self.round_size is None:
            return np.sort(np.concatenate([self.orders[c] for c in active]))  # dataset order
        lo, hi = r * self.round_size, (r + 1) * self.round_size
        parts = [self.orders[c][lo:hi] for c in active]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def still_active(self, r: int, active: list[int], moments: list[Moments]) -> list[int]:
        """The classes of ``active`` that go on after round ``r``: images left and, under the rule, some ratio of
        some level's ``moments`` above the tolerance."""
        if self.round_size is None:
            return []
        left = [c for c in active if len(self.orders[c]) > (r + 1) * self.round_size]
        if self.tolerance is None or not left:
            return left
        worst = torch.stack([relative_errors(m, self.ipc).max(dim=1).values for m in moments]).max(dim=0).values
        return [c for c in left if float(worst[c]) > self.tolerance]


def make_plan(targets: np.ndarray, num_classes: int, per_class: int | str, tolerance: float | None,
              check_every: int, seed: int, ipc: int) -> Plan:
    """The plan for ``invert.per_class`` (auto, all or a cap), ``invert.tolerance`` and ``check_every``.

    ``all``: every image, in dataset order, in one round, no rule. Otherwise class c's images are shuffled by a
    generator seeded from (seed, 'invert-order', c) alone, so the order is the same whatever the batch size and
    process count, and cut to the cap; a class with fewer images than the cap is inverted whole.
    """
    targets = np.asarray(targets)
    members = [np.flatnonzero(targets == c) for c in range(num_classes)]  # (n_c,) in dataset order
    if per_class == ALL:
        return Plan(members, None, None, ipc)
    cap = None if per_class == "auto" else int(per_class)
    orders = []
    for c, idx in enumerate(members):
        perm = torch.randperm(len(idx), generator=generator_for(seed, "invert-order", c)).numpy()
        orders.append(idx[perm][:cap])
    return Plan(orders, check_every, tolerance, ipc)


def _kappa_minus_one(m: Moments) -> torch.Tensor:
    """(C, D): kappa - 1 = n m4 / m2^2 - 1 (the data's kurtosis less one, >= 0), 0 where a dimension is constant."""
    n = m.n.clamp(min=1.0)[:, None]
    return (n * m.m4 / m.m2.clamp(min=torch.finfo(torch.float64).tiny) ** 2 - 1.0).clamp(min=0.0)


def relative_errors(m: Moments, ipc: int) -> torch.Tensor:
    """(C, 3) float64: r_mu, r_sigma, r_gamma of each class (module docstring); inf for a class with < 4 images."""
    n = m.n.clamp(min=1.0)
    base = (ipc / n).sqrt()  # (C,)
    r_sigma = base * (_kappa_minus_one(m) / 2.0).mean(dim=1).sqrt()
    out = torch.stack([base, r_sigma, base], dim=1)
    out[m.n < 4] = math.inf
    return out


def standard_errors(m: Moments) -> torch.Tensor:
    """(C, 3) float64: the RMS over dimensions of the standard errors of each class's mean, std and skewness
    (module docstring); inf for a class with < 4 images."""
    n = m.n.clamp(min=1.0)
    var = m.m2 / (n[:, None] - 1.0).clamp(min=1.0)  # (C, D) unbiased
    se_mean = (var / n[:, None]).mean(dim=1).sqrt()
    se_std = (var * _kappa_minus_one(m) / (4.0 * n[:, None])).mean(dim=1).sqrt()
    se_skew = (6.0 / n).sqrt()
    out = torch.stack([se_mean, se_std, se_skew], dim=1)
    out[m.n < 4] = math.inf
    return out


def per_class_record(classes: list[str], m: Moments, ipc: int) -> list[dict[str, object]]:
    """What stages.json records per class: images inverted, relative and absolute standard errors."""
    rel, se = relative_errors(m, ipc), standard_errors(m)
    names = ("mean", "std", "skewness")

    def rounded(row: torch.Tensor, digits: int) -> dict[str, float | None]:
        return {k: round(float(v), digits) if math.isfinite(float(v)) else None for k, v in zip(names, row)}

    return [{"class": name, "images": int(m.n[c]), "relative_se": rounded(rel[c], 4), "se": rounded(se[c], 5)}
            for c, name in enumerate(classes)]
