"""Property-based tests for streaming moments: any batching and any merge tree give one batch's moments.

Deterministic (``derandomize=True``, no example database). Examples per test: 400 for batch splits and
merge trees, 300 for associativity/commutativity, 300 for the empty identity, 1 for the empty-batch case.

Tolerances: float64 rounding in the pairwise update grows with the spread R = max|x - mean| and with the
magnitude A = max|x| of a class's values (the mean carries an error ~ eps * A). M_p is compared with an
absolute tolerance 1e-9 * n * (R + 1e-6 * A)^p + 1e-250 per (class, dimension), the mean with 1e-9 * A + 1e-250.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from d3hr.distillation.moments import Moments

RTOL = 1e-9
FLOOR = 1e-250  # absolute floor: values near the bottom of float64's range round as subnormals
SETTINGS = {"deadline": None, "derandomize": True, "database": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}

# Mixed magnitudes on purpose (up to 1e4, down to the smallest normal floats): the tolerance scales with them.
VALUES = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def labelled_data(draw, min_n: int = 0, max_n: int = 40):
    """x (n, D) float64 and labels (n,) in [0, C); with n small and C up to 6, classes with 0 or 1 sample are common."""
    num_classes = draw(st.integers(1, 6))
    dim = draw(st.integers(1, 5))
    n = draw(st.integers(min_n, max_n))
    x = draw(arrays(np.float64, (n, dim), elements=VALUES))
    labels = draw(arrays(np.int64, (n,), elements=st.integers(0, num_classes - 1)))
    # Sometimes shift a class far from the origin so merges see large mean differences against a small spread.
    shift = draw(arrays(np.float64, (num_classes,), elements=st.sampled_from([0.0, 0.0, 1e3, -5e3, 1e-3])))
    x = x + shift[labels][:, None]
    return torch.from_numpy(x), torch.from_numpy(labels), num_classes


@st.composite
def split_sizes(draw, n: int):
    """Non-empty batch sizes summing to n (a single batch is one of the splits)."""
    if n == 0:
        return []
    cuts = draw(st.sets(st.integers(1, n - 1), max_size=min(n - 1, 12))) if n > 1 else set()
    bounds = [0, *sorted(cuts), n]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def _batches(x, labels, num_classes, sizes):
    parts, start = [], 0
    for s in sizes:
        parts.append(Moments.from_batch(x[start:start + s], labels[start:start + s], num_classes))
        start += s
    return parts


def _merge_tree(draw, parts, num_classes, dim):
    """Fold the parts by repeatedly merging two arbitrary ones (any order, any grouping, either side first)."""
    parts = list(parts) or [Moments.zeros(num_classes, dim)]
    while len(parts) > 1:
        i = draw(st.integers(0, len(parts) - 1))
        a = parts.pop(i)
        j = draw(st.integers(0, len(parts) - 1))
        b = parts.pop(j)
        parts.append(a.merge(b))
    return parts[0]


def _scales(x, labels, num_classes):
    """Per (class, dimension): count, spread R = max|x - mean| and magnitude A = max|x|, from the data itself."""
    x, labels = x.numpy(), labels.numpy()
    count = np.zeros((num_classes, 1))
    spread = np.zeros((num_classes, x.shape[1]))
    mag = np.zeros((num_classes, x.shape[1]))
    for c in range(num_classes):
        xc = x[labels == c]
        if len(xc):
            count[c] = len(xc)
            spread[c] = np.abs(xc - xc.mean(0)).max(0)
            mag[c] = np.abs(xc).max(0)
    return (torch.from_numpy(a) for a in (count, spread, mag))


def assert_same_moments(got: Moments, want: Moments, x, labels, num_classes):
    count, spread, mag = _scales(x, labels, num_classes)
    assert torch.equal(got.n, want.n)  # counts are small integers: exact in float64
    assert got.mean.shape == want.mean.shape
    tol_mean = RTOL * mag + FLOOR
    assert bool(((got.mean - want.mean).abs() <= tol_mean).all()), (got.mean, want.mean)
    base = spread + 1e-6 * mag
    for p, name in ((2, "m2"), (3, "m3"), (4, "m4")):
        g, w = getattr(got, name), getattr(want, name)
        tol = RTOL * count * base**p + FLOOR
        assert bool(torch.isfinite(g).all()), (name, g)
        assert bool(((g - w).abs() <= tol).all()), (name, g, w, tol)
    assert bool((got.m2 >= 0).all())  # every term of the M2 update is non-negative


@settings(max_examples=400, **SETTINGS)
@given(data=labelled_data(), choices=st.data())
def test_any_split_and_merge_tree_equals_one_batch(data, choices):
    x, labels, num_classes = data
    one = Moments.from_batch(x, labels, num_classes) if len(x) else Moments.zeros(num_classes, x.shape[1])
    sizes = choices.draw(split_sizes(len(x)))
    parts = _batches(x, labels, num_classes, sizes)
    merged = _merge_tree(choices.draw, parts, num_classes, x.shape[1])
    assert_same_moments(merged, one, x, labels, num_classes)
    # Also the streaming fold used by the pipeline: zeros, then each batch in a random order.
    acc = Moments.zeros(num_classes, x.shape[1])
    for i in choices.draw(st.permutations(range(len(sizes)))):
        acc = acc.merge(parts[i])
    assert_same_moments(acc, one, x, labels, num_classes)
    # Empty classes stay exactly empty.
    empty = one.n == 0
    for t in (merged.mean, merged.m2, merged.m3, merged.m4):
        assert bool((t[empty] == 0).all())


@st.composite
def three_parts(draw):
    """Data cut into three consecutive parts, any of which may be empty (then it is ``Moments.zeros``)."""
    x, labels, num_classes = draw(labelled_data(min_n=1))
    i, j = sorted(draw(st.lists(st.integers(0, len(x)), min_size=2, max_size=2)))
    parts = []
    for lo, hi in ((0, i), (i, j), (j, len(x))):
        parts.append(Moments.from_batch(x[lo:hi], labels[lo:hi], num_classes) if hi > lo
                     else Moments.zeros(num_classes, x.shape[1]))
    return x, labels, num_classes, parts


@settings(max_examples=300, **SETTINGS)
@given(case=three_parts())
def test_merge_is_associative_and_commutative_within_rounding(case):
    x, labels, num_classes, (a, b, c) = case
    whole = Moments.from_batch(x, labels, num_classes)
    assert_same_moments(a.merge(b), b.merge(a), x, labels, num_classes)
    assert_same_moments(a.merge(b).merge(c), a.merge(b.merge(c)), x, labels, num_classes)
    assert_same_moments(a.merge(b).merge(c), c.merge(a).merge(b), x, labels, num_classes)
    assert_same_moments(a.merge(b.merge(c)), whole, x, labels, num_classes)


@settings(max_examples=300, **SETTINGS)
@given(data=labelled_data(min_n=1))
def test_merging_with_empty_moments_is_the_identity(data):
    x, labels, num_classes = data
    m = Moments.from_batch(x, labels, num_classes)
    empty = Moments.zeros(num_classes, x.shape[1])
    right = m.merge(empty)  # exact: every update term is multiplied by the empty side's zero count
    for name in ("n", "mean", "m2", "m3", "m4"):
        assert torch.equal(getattr(right, name), getattr(m, name)), name
    left = empty.merge(m)  # mean is recomputed as 0 + mean * n / n: equal up to one rounding
    assert_same_moments(left, m, x, labels, num_classes)
    for name in ("n", "m2", "m3", "m4"):
        assert torch.equal(getattr(left, name), getattr(m, name)), name
    torch.testing.assert_close(left.mean, m.mean, rtol=4e-16, atol=0.0)


def test_from_batch_accepts_an_empty_batch():
    """A batch with no rows (e.g. an empty shard) should give empty moments; from_batch reshapes with -1 and fails."""
    m = Moments.from_batch(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 2)
    assert m.n.tolist() == [0.0, 0.0] and m.mean.shape == (2, 3)
