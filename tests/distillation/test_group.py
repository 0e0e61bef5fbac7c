import importlib

import pytest
import torch

from d3hr.distillation.group import (
    DRAW_BLOCK,
    draw_candidates,
    group_loss,
    group_loss_reference,
    group_z_stats,
    select_groups,
)

W = (1.0, 1.0, 0.5)


def _class_stats(num_classes=5, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(num_classes, dim, generator=g)
    std = torch.rand(num_classes, dim, generator=g) + 0.5
    skew = 0.5 * torch.randn(num_classes, dim, generator=g)
    return mean, std, skew


@pytest.mark.parametrize("ipc", [2, 10, 50])
def test_matrix_loss_equals_direct_reference(ipc):
    mean, std, skew = _class_stats()
    z = draw_candidates(3, 0, 0, 100, ipc, mean.shape[1])
    loss = group_loss(*group_z_stats(z), std, skew, W)  # (100, C)
    for c in range(len(mean)):
        x = mean[c] + std[c] * z  # (100, ipc, D)
        ref = group_loss_reference(x, mean[c].double(), std[c].double(), skew[c].double(), W)
        torch.testing.assert_close(loss[:, c].double(), ref, rtol=1e-4, atol=1e-4)


def test_selected_group_has_lowest_loss_of_all_candidates():
    mean, std, skew = _class_stats()
    m, ipc = 700, 10
    sel = select_groups(mean, std, skew, ipc, m, W, seed=7, chunk=128)
    for c in range(len(mean)):
        z = draw_candidates(7, c, 0, m, ipc, mean.shape[1])
        ref = group_loss_reference(mean[c] + std[c] * z, mean[c].double(), std[c].double(), skew[c].double(), W)
        assert int(sel.index[c]) == int(ref.argmin())
        torch.testing.assert_close(sel.x[c], mean[c] + std[c] * z[sel.index[c]])
        assert sel.loss[c] <= sel.loss_first[c]


def test_selection_independent_of_chunk_size():
    mean, std, skew = _class_stats()
    runs = [select_groups(mean, std, skew, 10, 1000, W, seed=1, chunk=c) for c in (DRAW_BLOCK, 256, 1000, 4096)]
    for r in runs[1:]:
        assert torch.equal(r.index, runs[0].index)
        assert torch.equal(r.x, runs[0].x)


def test_base_rs_is_first_candidate_and_differs_from_group_sampling():
    mean, std, skew = _class_stats()
    group = select_groups(mean, std, skew, 10, 2000, W, seed=1)
    rand = select_groups(mean, std, skew, 10, 2000, W, seed=1, strategy="random")
    assert torch.all(rand.index == 0)
    assert not torch.equal(group.x, rand.x)
    assert torch.all(group.loss < rand.loss)
    torch.testing.assert_close(rand.loss, group.loss_first)


def test_shared_pools_score_every_class_against_the_same_candidates():
    mean, std, skew = _class_stats(num_classes=6)
    shared = select_groups(mean, std, skew, 10, 500, W, seed=2, pools=1)
    assert torch.all(shared.pool == 0)
    own = select_groups(mean, std, skew, 10, 500, W, seed=2)
    assert own.pool.tolist() == list(range(6))
    z = draw_candidates(2, 0, 0, 500, 10, mean.shape[1])
    loss = group_loss(*group_z_stats(z), std, skew, W)
    assert shared.index.tolist() == loss.argmin(dim=0).tolist()


def test_ipc_one_scores_the_mean_only():
    """A group of one has no std or skewness: the search keeps the candidate nearest the class mean, and the other
    two terms of the loss are the same for every candidate."""
    mean, std, skew = _class_stats()
    m = 300
    sel = select_groups(mean, std, skew, 1, m, W, seed=0)
    assert sel.x.shape == (5, 1, 12) and torch.isfinite(sel.loss).all()
    for c in range(len(mean)):
        x = mean[c] + std[c] * draw_candidates(0, c, 0, m, 1, mean.shape[1])[:, 0]  # (m, D)
        dist = (x - mean[c]).norm(dim=1)  # ||group mean - mu|| of each candidate
        assert int(sel.index[c]) == int(dist.argmin())
        torch.testing.assert_close(sel.x[c, 0], x[sel.index[c]])
        torch.testing.assert_close(sel.loss_first[c] - sel.loss[c], W[0] * (dist[0] - dist.min()))


def test_draws_do_not_depend_on_how_they_are_split():
    whole = draw_candidates(5, 3, 0, 3 * DRAW_BLOCK, 4, 6)
    parts = torch.cat([draw_candidates(5, 3, s, DRAW_BLOCK, 4, 6) for s in range(0, 3 * DRAW_BLOCK, DRAW_BLOCK)])
    assert torch.equal(whole, parts)


@pytest.mark.parametrize(("ipc", "dim"), [(3, 1000), (10, 33), (2, 4096)])
def test_z_stats_same_bits_at_any_slice_or_split(monkeypatch, ipc, dim):
    """Cache-sized slices and caller-side splits (draw blocks, chunks, processes) must not change a single bit."""
    group = importlib.import_module("d3hr.distillation.group")  # the module (d3hr.distill is also the api function)
    z = draw_candidates(1, 0, 0, 300, ipc, dim)
    monkeypatch.setattr(group, "SLICE_ELEMENTS", 1 << 40)  # one slice: every op sees the whole (300, ipc, D)
    whole = group_z_stats(z)
    monkeypatch.setattr(group, "SLICE_ELEMENTS", 5 * ipc * dim)  # slices of 5 candidates
    sliced = group_z_stats(z)
    parts = [group_z_stats(z[i : i + 37]) for i in range(0, 300, 37)]  # ragged splits
    for j in range(3):
        assert torch.equal(sliced[j], whole[j])
        assert torch.equal(torch.cat([p[j] for p in parts]), whole[j])


def test_z_stats_write_into_given_buffers():
    z = draw_candidates(4, 0, 0, DRAW_BLOCK, 10, 40)
    out = tuple(torch.full((DRAW_BLOCK, 40), float("nan")) for _ in range(3))
    got = group_z_stats(z, out=out)
    assert all(g is o for g, o in zip(got, out))
    ref = group_z_stats(z)
    assert all(torch.equal(g, r) for g, r in zip(got, ref))


def test_adjusted_skewness_is_scipys_unbiased_estimator_and_zero_for_two() -> None:
    from scipy import stats as sps

    from d3hr.distillation.group import group_z_stats, select_groups, skew_factor

    z = torch.randn(5, 10, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    _, _, g1 = group_z_stats(z.clone())
    _, _, big_g1 = group_z_stats(z.clone(), skewness="adjusted")
    ref = torch.from_numpy(sps.skew(z.double().numpy(), axis=1, bias=False)).float()
    torch.testing.assert_close(big_g1, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(big_g1, g1 * (90**0.5 / 8))
    assert skew_factor(2, "adjusted") == 0.0 and skew_factor(1, "adjusted") == 0.0 and skew_factor(2) == 1.0
    assert not group_z_stats(torch.randn(3, 2, 4), skewness="adjusted")[2].any()
    with pytest.raises(ValueError, match="skewness must be one of"):
        skew_factor(10, "kurtic")
    mean, std = torch.zeros(2, 16), torch.ones(2, 16)
    skew = torch.full((2, 16), 0.5)
    a = select_groups(mean, std, skew, 10, 512, (1.0, 1.0, 0.5), seed=0)
    b = select_groups(mean, std, skew, 10, 512, (1.0, 1.0, 0.5), seed=0, skewness="biased")
    assert torch.equal(a.index, b.index)  # the default is the biased estimator every cached selection used
