"""Class distributions with correlations (d3hr.distillation.covariance): streaming co-moments, shrinkage, the full
and low-rank models and their square roots, group scoring in whitened coordinates, refusals, statistics of earlier
versions, and tiny digits runs with stats.covariance=full and lowrank:4."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import d3hr
from d3hr.config import nest, parse_override, resolve_covariance
from d3hr.distillation import covariance as cv
from d3hr.distillation import invert
from d3hr.distillation.covariance import (
    ClassRoot,
    CoMoments,
    JointStream,
    check_fits,
    fit,
    full_model,
    lowrank_model,
    read_root,
)
from d3hr.distillation.group import draw_candidates, group_loss_reference, select_groups
from d3hr.errors import D3HRError
from d3hr.utils.io import load_tensors, save_tensors, sha256_json
from tests.conftest import FAST_TRAIN

F64 = torch.float64


def _correlated(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws (n, D) of a Gaussian with a random dense covariance, and that covariance (D, D)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=F64) / dim**0.5 + torch.eye(dim, dtype=F64)
    return torch.randn(n, dim, generator=g, dtype=F64) @ a.T + 3.0, a @ a.T


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ----- streaming co-moments ----------------------------------------------------------------------------------------
@st.composite
def _split_data(draw):
    num_classes, dim, n = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 60))
    x = draw(arrays(np.float64, (n, dim), elements=st.floats(-100, 100, allow_nan=False, allow_subnormal=False)))
    labels = draw(arrays(np.int64, (n,), elements=st.integers(0, num_classes - 1)))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=8))) - {n})
    return torch.from_numpy(x), torch.from_numpy(labels), num_classes, cuts, draw(st.randoms())


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_split_data())
def test_streamed_comoments_equal_torch_cov_for_any_split_and_merge_order(data):
    x, labels, num_classes, cuts, rnd = data
    bounds = [0, *cuts, len(x)]
    parts = [CoMoments.from_batch(x[a:b], labels[a:b], num_classes) for a, b in zip(bounds, bounds[1:])]
    streamed = CoMoments.zeros(num_classes, x.shape[1])
    for a, b in zip(bounds, bounds[1:]):  # in batch order, compact parts: what inversion does
        streamed.update(CoMoments.batch(x[a:b], labels[a:b]))
    rnd.shuffle(parts)
    while len(parts) > 1:  # any merge tree
        i = rnd.randrange(len(parts) - 1)
        parts[i : i + 2] = [parts[i].merge(parts[i + 1])]
    for m in (streamed, parts[0]):
        for c in range(num_classes):
            xc = x[labels == c]
            assert m.n[c] == len(xc)
            if len(xc) < 2:
                continue
            tol = 1e-9 * len(xc) * (float(xc.abs().max()) + 1.0) ** 2
            np.testing.assert_allclose(m.mean[c], xc.mean(0), atol=1e-9 * (float(xc.abs().max()) + 1.0))
            np.testing.assert_allclose(m.cov(c), torch.cov(xc.T, correction=1).reshape(x.shape[1], -1), atol=tol)


def test_update_and_merge_give_the_same_bits():
    x, _ = _correlated(90, 5, 0)
    labels = torch.tensor([0, 2] * 45)  # class 1 absent
    a, b = x[:40], x[40:]
    updated = CoMoments.from_batch(a, labels[:40], 3)
    updated.update(CoMoments.batch(b, labels[40:]))
    merged = CoMoments.from_batch(a, labels[:40], 3).merge(CoMoments.from_batch(b, labels[40:], 3))
    for u, m in zip((updated.n, updated.mean, updated.c2), (merged.n, merged.mean, merged.c2)):
        assert u.numpy().tobytes() == m.numpy().tobytes()


# ----- shrinkage and the two models --------------------------------------------------------------------------------
def test_shrinkage_makes_a_positive_definite_model_when_n_is_below_d():
    x, _ = _correlated(10, 32, 1)  # n < D: S is singular
    cov = torch.cov(x.T)
    assert torch.linalg.matrix_rank(cov) < 32
    chol, rho = full_model(cov, 10, None, "c")
    assert 0 < rho <= 1
    sigma = chol @ chol.T
    assert torch.linalg.eigvalsh(sigma).min() > 0
    np.testing.assert_allclose(sigma.diagonal(), cov.diagonal(), rtol=1e-12)  # variances kept
    off = ~torch.eye(32, dtype=torch.bool)
    np.testing.assert_allclose(sigma[off], (1 - rho) * cov[off], rtol=1e-9, atol=1e-12)  # correlations shrunk
    u, s, rest, rho_lr = lowrank_model(x, 12, None, "c")  # R = 12 > n - 1 = 9: the extra directions are 0
    assert rho_lr == pytest.approx(rho, rel=1e-9)  # the same OAS rho from the data as from the co-moments
    assert torch.all(s[9:] <= 1e-12 * s[0]) and torch.all(rest >= rho * cov.diagonal() * (1 - 1e-9))


def test_oas_rho_shrinks_uncorrelated_classes_to_the_diagonal_and_keeps_strong_correlations():
    g = torch.Generator().manual_seed(2)
    independent = torch.randn(500, 8, generator=g, dtype=F64) * torch.arange(1, 9, dtype=F64)
    _, rho_ind = full_model(torch.cov(independent.T), 500, None, "c")
    strong = torch.randn(5000, 1, generator=g, dtype=F64) + 0.1 * torch.randn(5000, 8, generator=g, dtype=F64)
    _, rho_strong = full_model(torch.cov(strong.T), 5000, None, "c")
    assert rho_ind > 0.5 and rho_strong < 0.01


def test_lowrank_model_is_the_leading_directions_plus_the_diagonal_remainder():
    x, _ = _correlated(400, 16, 3)
    cov = torch.cov(x.T)
    u, s, rest, rho = lowrank_model(x, 4, 0.25, "c")
    assert rho == 0.25
    model = u @ torch.diag(s) @ u.T + torch.diag(rest)
    np.testing.assert_allclose(model.diagonal(), cov.diagonal(), rtol=1e-10)  # every variance exact
    np.testing.assert_allclose(s, 0.75 * torch.linalg.eigvalsh(cov).flip(0)[:4], rtol=1e-9)  # top R of (1-rho) S
    np.testing.assert_allclose(u.T @ u, torch.eye(4, dtype=F64), atol=1e-10)
    root = ClassRoot.lowrank(u[None], s[None], rest[None])
    dense = root.color(torch.eye(16, dtype=F64)[None])[0].T  # L (D, D): column j is L e_j
    np.testing.assert_allclose(dense @ dense.T, model, rtol=1e-9, atol=1e-12)  # L L^T = U diag(s) U^T + diag(r)
    z = torch.randn(1, 7, 16, dtype=F64)
    np.testing.assert_allclose(root.whiten(root.color(z)), z, atol=1e-10)


@pytest.mark.parametrize("form", ["full", "lowrank"])
def test_x_equals_mu_plus_l_z_reproduces_the_covariance(form):
    x, _ = _correlated(300, 6, 4)
    if form == "full":
        chol, _ = full_model(torch.cov(x.T), 300, None, "c")
        root = ClassRoot.full(chol[None])
        target = chol @ chol.T
    else:
        u, s, rest, _ = lowrank_model(x, 2, None, "c")
        root = ClassRoot.lowrank(u[None], s[None], rest[None])
        target = u @ torch.diag(s) @ u.T + torch.diag(rest)
    z = torch.randn(1, 200_000, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    draws = root.color(z)[0]
    np.testing.assert_allclose(torch.cov(draws.T), target, atol=0.03 * float(target.diagonal().max()))
    np.testing.assert_allclose(root.whiten(draws[None])[0], z[0], atol=1e-9)


def test_group_scoring_in_whitened_coordinates_is_the_direct_loss_there():
    x, _ = _correlated(200, 5, 6)
    chol, _ = full_model(torch.cov(x.T), 200, None, "c")
    root = ClassRoot.full(chol[None].float())
    mu, gamma = x.mean(0).float()[None], torch.tensor([[0.3, -0.2, 0.0, 0.5, 0.1]])
    weights, ipc, m = (1.0, 1.0, 0.5), 4, 128
    sel = select_groups(torch.zeros_like(mu), torch.ones_like(mu), gamma, ipc, m, weights, seed=7)
    z = draw_candidates(7, 0, 0, m, ipc, 5)  # (m, ipc, D) the same candidates
    xs = mu[:, None] + root.color(z.reshape(1, m * ipc, 5)).reshape(m, ipc, 5)  # the class's groups x = mu + L z
    white = root.whiten((xs - mu[:, None]).reshape(1, m * ipc, 5)).reshape(m, ipc, 5)
    ref = group_loss_reference(white, torch.zeros(5, dtype=F64), torch.ones(5, dtype=F64), gamma[0].double(),
                               weights)
    assert int(sel.index[0]) == int(ref.argmin())
    assert float(sel.loss[0]) == pytest.approx(float(ref.min()), rel=1e-4)


# ----- refusals ----------------------------------------------------------------------------------------------------
def test_rank_at_or_above_d_is_refused_naming_the_value():
    with pytest.raises(D3HRError) as exc:
        check_fits("lowrank:64", dim=64, num_classes=10, images=600, levels=1)
    assert "lowrank:64" in _one_line(exc) and "D = 64" in str(exc.value)
    check_fits("lowrank:63", dim=64, num_classes=10, images=600, levels=1)
    with pytest.raises(D3HRError, match="lowrank:R with an integer R >= 1 or auto, got 'lowrank:0'"):
        d3hr.load_config(None, [{"stats": {"covariance": "lowrank:0"}}])
    for bad in (1.5, "often", "nan"):
        with pytest.raises(D3HRError, match="stats.shrinkage must be auto or a number in"):
            d3hr.load_config(None, [{"stats": {"shrinkage": bad}}])
    assert d3hr.load_config(None, [{"stats": {"shrinkage": 0.1}}]).stats.shrinkage == "0.1"


def test_not_positive_definite_covariances_are_refused_naming_the_class():
    x, _ = _correlated(10, 32, 7)
    with pytest.raises(D3HRError) as exc:
        full_model(torch.cov(x.T), 10, 0.0, "sandal")
    assert "class 'sandal'" in _one_line(exc) and "not positive definite after shrinkage 0" in str(exc.value)
    with pytest.raises(D3HRError) as exc:
        lowrank_model(x, 12, 0.0, "boot")  # R >= n - 1 without shrinkage: no remainder left
    assert "class 'boot'" in _one_line(exc) and "diagonal remainder" in str(exc.value)
    flat = x.clone()
    flat[:, 3] = 1.0
    with pytest.raises(D3HRError) as exc:
        full_model(torch.cov(flat.T), 10, None, "bag")
    assert "class 'bag'" in _one_line(exc) and "dimension 3 has variance 0" in str(exc.value)


def test_accumulators_over_the_memory_budget_are_refused_or_capped_before_inversion(monkeypatch):
    with pytest.raises(D3HRError) as exc:  # ImageNet: D = 4096, 1000 classes
        check_fits("full", dim=4096, num_classes=1000, images=300_000, levels=1)
    assert "use stats.covariance=lowrank:R" in _one_line(exc)
    # lowrank at ImageNet scale: the kept latents are capped at what fits 8 GB, 2^33 / (4096 x 4 x 1000) = 524
    assert check_fits("lowrank:64", dim=4096, num_classes=1000, images=1_281_167, levels=1) == 524
    assert check_fits("lowrank:64", dim=4096, num_classes=1000, images=1_281_167, levels=2) == 262
    assert check_fits("lowrank:16", dim=256, num_classes=10, images=60_000, levels=1) is None  # all fit: no cap
    assert check_fits("lowrank:16", dim=256, num_classes=10, images=60_000, levels=1, kept_per_class=40) == 40
    with pytest.raises(D3HRError) as exc:  # an explicit cap that does not fit
        check_fits("lowrank:64", dim=4096, num_classes=1000, images=1_281_167, levels=1, kept_per_class=600)
    assert "stats.kept_per_class=600" in _one_line(exc) and "at most 524 fit" in str(exc.value)
    monkeypatch.setattr(cv, "MEMORY_BUDGET", 1000)
    assert check_fits("diag", dim=4096, num_classes=1000, images=1_281_167, levels=1) is None  # diag keeps nothing
    with pytest.raises(D3HRError, match="not even 2 inverted latents per class"):
        check_fits("lowrank:4", dim=4096, num_classes=1000, images=1_281_167, levels=1)
    for bad in (1, "some", 2.5):
        with pytest.raises(D3HRError, match="stats.kept_per_class must be auto or an integer >= 2"):
            d3hr.load_config(None, [{"stats": {"kept_per_class": bad}}])


def test_capped_stream_keeps_the_first_latents_of_each_class_whatever_the_batch_size():
    x, _ = _correlated(90, 8, 8)
    y = torch.tensor([0, 0, 1, 2, 0, 1] * 15)  # class 0 has 45 images, 1 and 2 have 30 and 15

    def kept(batch: int, cap: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        js = JointStream.start("lowrank:2", [6], 3, 8, cap)
        for b in range(0, 90, batch):
            js.add(JointStream.batch(js.form, y[b : b + batch], [x[b : b + batch].float()]))
        return js.kept(6)

    labels, z = kept(7, 20)
    assert torch.bincount(labels).tolist() == [20, 20, 15]  # the cap, or the whole class when smaller
    first = torch.cat([(y == c).nonzero().flatten()[: min(20, int((y == c).sum()))] for c in range(3)]).sort().values
    assert torch.equal(z, x[first].float())  # the first of each class, in visiting order
    for batch in (1, 13, 90):
        other = kept(batch, 20)
        assert torch.equal(other[0], labels) and torch.equal(other[1], z)
    assert len(kept(13, None)[0]) == 90


def test_damaged_factors_are_refused_naming_the_class():
    meta = {"classes": ["a", "b"], "covariance": "full"}
    chol = torch.eye(3).repeat(2, 1, 1)
    chol[1, 2, 2] = 0.0
    with pytest.raises(D3HRError, match="class 'b' is not the Cholesky factor"):
        read_root({"cov_factor": chol, "skewness_white": torch.zeros(2, 3)}, meta)
    meta = {"classes": ["a", "b"], "covariance": "lowrank:3"}
    low = {"lowrank_u": torch.zeros(2, 3, 3), "lowrank_s": torch.ones(2, 3), "diag_rest": torch.ones(2, 3),
           "skewness_white": torch.zeros(2, 3)}
    with pytest.raises(D3HRError, match="needs R < D = 3"):
        read_root(low, meta)


# ----- statistics of earlier versions, keys, resuming --------------------------------------------------------------
def test_diag_only_statistics_load_as_diag():
    old = {"mean": torch.zeros(2, 4), "std": torch.ones(2, 4), "skewness": torch.zeros(2, 4)}
    assert read_root(old, {"classes": ["a", "b"]}) is None
    assert read_root(old, {"classes": ["a", "b"], "covariance": "diag"}) is None


def test_covariance_enters_the_invert_key_only_when_not_diag():
    identity = {"name": "digits", "sha256": "0" * 64}

    def key(**stats):
        cfg = d3hr.load_config(None, [{"stats": stats}] if stats else [])
        return invert.stage_key(SimpleNamespace(cfg=cfg, data_identity=lambda: identity), "gen")

    d, v = d3hr.load_config().diffusion, d3hr.load_config().invert
    before = sha256_json({  # the fields every earlier version hashed
        "generator": "gen", "data": identity, "num_steps": d.num_steps, "inversion_steps": d.inversion_steps,
        "guidance_scale": d.guidance_scale, "encode": d.encode, "precision": d.precision, "batch_size": d.batch_size,
        "depth": None, "subsample": {"per_class": v.per_class, "tolerance": v.tolerance, "check_every": v.check_every,
                                     "seed": 0, "ipc": 10}, "seed": None})
    assert key() == key(covariance="diag", shrinkage="0.5") == before
    keys = {key(covariance="full"), key(covariance="full", shrinkage="0.1"), key(covariance="lowrank:4"), before}
    assert len(keys) == 4
    # the kept-latents cap: auto keeps the keys above (its cap follows from them), a number changes them
    assert key(covariance="lowrank:4", kept_per_class="auto") == key(covariance="lowrank:4")
    assert key(covariance="lowrank:4", kept_per_class=50) not in keys
    assert key(kept_per_class=50) == before  # diag keeps no latents
    # auto: keyed as the form it resolves to at the run's IPC (diag below 50, so the keys of earlier versions)
    assert key(covariance="auto") == before
    at50 = [{"select": {"ipc": 50}}]

    def key50(**stats):
        cfg = d3hr.load_config(None, [*at50, {"stats": stats}])
        return invert.stage_key(SimpleNamespace(cfg=cfg, data_identity=lambda: identity), "gen")

    assert key50(covariance="auto") == key50(covariance="lowrank:16") != key50()


def test_auto_covariance_resolves_by_ipc():
    assert [resolve_covariance("auto", ipc) for ipc in (1, 10, 49, 50, 200)] == ["diag"] * 3 + ["lowrank:16"] * 2
    assert [resolve_covariance(t, 50) for t in ("diag", "full", "lowrank:4")] == ["diag", "full", "lowrank:4"]
    assert d3hr.load_config(None, [{"stats": {"covariance": "auto"}}]).stats.covariance == "auto"
    with pytest.raises(D3HRError, match="lowrank:R with an integer R >= 1 or auto, got 'automatic'"):
        d3hr.load_config(None, [{"stats": {"covariance": "automatic"}}])


def test_digits_run_with_auto_covariance_at_ipc_50_draws_from_lowrank_16(tmp_path):
    cfg = d3hr.load_config(None, [nest(*parse_override(s)) for s in
                                  [*FAST_TRAIN, "select.ipc=50", "stats.covariance=auto", "select.candidates=32"]])
    cfg.out = str(tmp_path / "run")
    d3hr.distill(cfg)
    run = tmp_path / "run"
    stages = json.loads((run / "stages.json").read_text())
    assert stages["invert"]["covariance"] == "lowrank:16" and stages["select"]["covariance"] == "lowrank:16"
    assert "covariance: auto" in (run / "config.yaml").read_text()  # the rule is kept, its choice recorded
    assert load_tensors(run / "stats.safetensors")[0]["lowrank_u"].shape[2] == 16


def test_joint_stream_resumes_from_its_partial_tensors_to_the_same_bits(tmp_path):
    x, _ = _correlated(120, 8, 8)
    y = torch.arange(120) % 3
    classes = ["a", "b", "c"]

    def stream(form: str, stop: int | None, cap: int | None = None) -> JointStream:
        js = JointStream.start(form, [6], 3, 8, cap)
        for b in range(0, 120, 20):
            if b == stop:  # what a killed run left: write the partial, read it back, go on
                save_tensors(tmp_path / "p.safetensors", js.tensors(), {"key": "k"})
                js = JointStream.from_tensors(form, [6], load_tensors(tmp_path / "p.safetensors")[0], 3, cap)
            js.add(JointStream.batch(js.form, y[b : b + 20], [x[b : b + 20].float()]))
        return js

    for form in ("full", "lowrank:3"):
        a, _ = fit(stream(form, None), 6, form, "auto", classes)
        b, rec = fit(stream(form, 60), 6, form, "auto", classes)
        assert a.keys() == b.keys() and all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a)
        assert rec["covariance"] == form and rec["kept_images"] == 120 and rec["kept_per_class"] is None
        a, _ = fit(stream(form, None, 25), 6, form, "auto", classes)  # capped: resumed mid-way to the same bits
        b, rec = fit(stream(form, 60, 25), 6, form, "auto", classes)
        assert all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a)
        assert rec["kept_images"] == 75 and rec["kept_per_class"] == 25


# ----- tiny digits runs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form,cap", [("full", None), ("lowrank:4", None), ("lowrank:4", 6)])
def test_digits_run_with_a_covariance_writes_images_and_records_the_form(tmp_path, form, cap):
    kept = [f"stats.kept_per_class={cap}"] if cap else []
    cfg = d3hr.load_config(None, [nest(*parse_override(s)) for s in
                                  [*FAST_TRAIN, "select.ipc=2", f"stats.covariance={form}", *kept]])
    cfg.out = str(tmp_path / "run")
    d3hr.distill(cfg)
    run = tmp_path / "run"
    assert len(list((run / "images").rglob("*.png"))) == 20
    stages = json.loads((run / "stages.json").read_text())
    assert stages["invert"]["covariance"] == form and stages["select"]["covariance"] == form
    fitted = stages["invert"]["covariance_fit"]
    assert fitted["kept_per_class"] == cap
    assert fitted["kept_images"] == (stages["invert"]["images"] if cap is None else 10 * cap)
    tensors, meta = load_tensors(run / "stats.safetensors")
    assert meta["covariance"] == form
    num_classes, dim = tensors["mean"].shape
    if form == "full":
        assert tensors["cov_factor"].shape == (num_classes, dim, dim)
    else:
        assert tensors["lowrank_u"].shape == (num_classes, dim, 4) and tensors["diag_rest"].shape == (num_classes, dim)
    assert tensors["skewness_white"].shape == (num_classes, dim)
    root = read_root(tensors, meta)
    sel, sel_meta = load_tensors(run / "selection.safetensors")
    z = root.whiten(sel["latents"].flatten(2) - tensors["mean"][:, None])  # the chosen z, back from x = mu + L z
    assert sel_meta["covariance"] == form and torch.isfinite(z).all() and float(z.std()) < 3.0
