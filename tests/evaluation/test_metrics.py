"""Paired t-intervals, rank correlations and DD-Ranking's scores against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from d3hr.evaluation.metrics import ars, hlr, ior, lrs, paired_t_interval, spearman_interval, unit_score


def test_paired_interval_by_hand() -> None:
    # d = (1, 2, 3): mean 2, sd 1, t_{0.975, 2} = 4.302653 -> 2 -+ 4.302653 / sqrt(3) = 2 -+ 2.484138
    iv = paired_t_interval([11, 12, 13], [10, 10, 10])
    assert (iv.mean, iv.n) == (2.0, 3)
    assert iv.low == pytest.approx(-0.484138, abs=1e-6) and iv.high == pytest.approx(4.484138, abs=1e-6)
    assert not iv.significant
    # d = (2, 3, 4, 3, 3): mean 3, sd sqrt(0.5), t_{0.975, 4} = 2.776445 -> 3 -+ 0.877989
    iv = paired_t_interval([2, 3, 4, 3, 3], [0, 0, 0, 0, 0])
    assert iv.low == pytest.approx(2.122011, abs=1e-6) and iv.high == pytest.approx(3.877989, abs=1e-6)
    assert iv.significant
    assert paired_t_interval([0, 0, 0], [2, 3, 4]).significant  # below 0 counts too
    one = paired_t_interval([1.0], [0.0])
    assert one.mean == 1.0 and math.isinf(one.low) and not one.significant


def test_dd_ranking_scores_by_hand() -> None:
    assert unit_score(1.0) == pytest.approx(1.0) and unit_score(-1.0) == pytest.approx(0.0)
    # full 0.93, syn hard 0.70, syn soft 0.82, random soft 0.80: HLR 0.23, IOR 0.02,
    # alpha = 0.5 * 0.02 - 0.5 * 0.23 = -0.105; LRS = (e^-0.105 - e^-1) / (e - e^-1) = 0.532446 / 2.350402
    assert hlr(0.93, 0.70) == pytest.approx(0.23) and ior(0.82, 0.80) == pytest.approx(0.02)
    assert lrs(0.93, 0.70, 0.82, 0.80) == pytest.approx(0.226534, abs=1e-6)
    # with aug 0.82 vs 0.80, without 0.60 vs 0.65: beta = 0.5 * 0.02 + 0.5 * (-0.05) = -0.015
    # ARS = (e^-0.015 - e^-1) / (e - e^-1) = 0.617233 / 2.350402
    assert ars(0.82, 0.80, 0.60, 0.65) == pytest.approx(0.262607, abs=1e-6)


def test_spearman_interval_by_hand() -> None:
    # ranks (1..5) against (2, 1, 4, 3, 5): sum d^2 = 4, rho = 1 - 6 * 4 / (5 * 24) = 0.8;
    # atanh(0.8) = 1.098612, half = 1.959964 * sqrt(1.06 / 2) = 1.426875 -> tanh(-0.328263), tanh(2.525488)
    c = spearman_interval([10, 20, 30, 40, 50], [0.2, 0.1, 0.4, 0.3, 0.5])
    assert c is not None and c.n == 5 and c.rho == pytest.approx(0.8)
    assert c.low == pytest.approx(-0.316959, abs=1e-6) and c.high == pytest.approx(0.987275, abs=1e-6)
    assert not c.significant
    # a monotone decreasing relation over 12 pairs: rho = -1, an interval that excludes 0
    down = spearman_interval(list(range(12)), [-v ** 3 for v in range(12)])
    assert down is not None and (down.rho, down.high) == (-1.0, -1.0) and down.significant
    # ties get average ranks: (1.5, 1.5, 3, 4) against (1, 2, 3, 4): r = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    # (ordinal ranks would give 1; the no-ties shortcut 1 - 6 sum d^2 / (n (n^2 - 1)) would give 0.95)
    tied = spearman_interval([7, 7, 8, 9], [1, 2, 3, 4])
    assert tied is not None and tied.rho == pytest.approx(math.sqrt(0.9))
    assert spearman_interval([1, 2, 3], [3, 2, 1]) is None  # n < 4
    assert spearman_interval([1, 1, 1, 1], [1, 2, 3, 4]) is None  # a constant side
    with pytest.raises(ValueError):
        spearman_interval([1, 2, 3, 4], [1, 2, 3])
