import numpy as np
import pytest
import scipy.stats
import torch

from d3hr.distillation.moments import Moments, normality_summary, normaltest_pvalues


def _split_merge(x, labels, num_classes, sizes, order):
    parts, start = [], 0
    for s in sizes:
        parts.append(Moments.from_batch(x[start : start + s], labels[start : start + s], num_classes))
        start += s
    acc = Moments.zeros(num_classes, x.shape[1])
    for i in order:
        acc = acc.merge(parts[i])
    return acc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_moments_match_scipy_for_random_splits(seed):
    rng = np.random.default_rng(seed)
    num_classes, n, dim = 4, 500, 7
    x = torch.from_numpy(rng.gamma(2.0, 1.5, size=(n, dim)) + rng.normal(size=(n, dim)))  # skewed data
    labels = torch.from_numpy(rng.integers(0, num_classes, size=n))
    cuts = np.sort(rng.choice(np.arange(1, n), size=rng.integers(1, 30), replace=False))
    sizes = np.diff(np.concatenate([[0], cuts, [n]])).tolist()
    m = _split_merge(x, labels, num_classes, sizes, rng.permutation(len(sizes)))
    for c in range(num_classes):
        xc = x[labels == c].numpy()
        assert m.n[c] == len(xc)
        np.testing.assert_allclose(m.mean[c], xc.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.std()[c], xc.std(0, ddof=1), rtol=1e-10)
        np.testing.assert_allclose(m.skewness()[c], scipy.stats.skew(xc, axis=0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(m.excess_kurtosis()[c], scipy.stats.kurtosis(xc, axis=0), rtol=1e-9, atol=1e-12)


def test_merge_handles_empty_classes_and_float32_input():
    x = torch.randn(10, 3, dtype=torch.float32)
    labels = torch.zeros(10, dtype=torch.long)
    m = Moments.from_batch(x, labels, 3).merge(Moments.zeros(3, 3))
    assert m.n.tolist() == [10, 0, 0]
    np.testing.assert_allclose(m.mean[0], x.double().mean(0), rtol=1e-12)
    assert torch.all(m.mean[1:] == 0)


def test_normaltest_pvalues_match_scipy():
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(size=(300, 5)), rng.exponential(size=(300, 5))], axis=1)
    skew = torch.from_numpy(scipy.stats.skew(data, axis=0))[None]
    kurt = torch.from_numpy(scipy.stats.kurtosis(data, axis=0))[None]
    p = normaltest_pvalues(skew, kurt, torch.tensor([300.0]))
    np.testing.assert_allclose(p[0].numpy(), scipy.stats.normaltest(data, axis=0).pvalue, rtol=1e-8)


def test_normality_summary_tells_gaussian_from_skewed():
    g = torch.Generator().manual_seed(0)
    normal = Moments.from_batch(torch.randn(2000, 50, generator=g), torch.zeros(2000, dtype=torch.long), 1)
    skewed = Moments.from_batch(torch.randn(2000, 50, generator=g).exp(), torch.zeros(2000, dtype=torch.long), 1)
    a, b = normality_summary(normal), normality_summary(skewed)
    assert a["share_normal"] > 0.8 and b["share_normal"] < 0.05
    assert b["mean_abs_skewness"] > 10 * a["mean_abs_skewness"]


def test_compact_then_expand_gives_the_same_bits():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 7, generator=g)
    y = torch.tensor([0, 2, 5] * 13 + [2])  # classes 1, 3, 4 absent
    m = Moments.from_batch(x, y, 6)
    idx, *_ = m.compact()
    assert idx.tolist() == [0, 2, 5]
    back = Moments.expand(m.compact(), 6)
    for a, b in zip((m.n, m.mean, m.m2, m.m3, m.m4), (back.n, back.mean, back.m2, back.m3, back.m4)):
        assert torch.equal(a, b) and a.numpy().tobytes() == b.numpy().tobytes()
