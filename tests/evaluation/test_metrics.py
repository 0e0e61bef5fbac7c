"""Paired t-intervals and DD-Ranking's scores against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from d3hr.evaluation.metrics import ars, hlr, ior, lrs, paired_t_interval, unit_score


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
