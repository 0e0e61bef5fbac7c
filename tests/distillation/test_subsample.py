"""Issue 16: per-class subsampling of the invert stage with a stopping rule, and the inversion depth from the data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from d3hr.cli import main
from d3hr.diffusion import DDIMGrid, ddim_invert, ddim_invert_levels, make_alphas_cumprod
from d3hr.distillation.depth import choose_level
from d3hr.distillation.moments import Moments
from d3hr.distillation.subsample import make_plan, relative_errors, standard_errors
from d3hr.utils.io import load_tensors, read_json
from tests.conftest import FAST_TRAIN

TARGETS = np.repeat(np.arange(3), [40, 7, 25])  # three classes, one smaller than any cap below


def _moments_of(plan, x: torch.Tensor, targets: np.ndarray) -> Moments:
    """Run ``plan`` over samples x (N, D) labelled ``targets`` as the invert stage does; the final moments."""
    num_classes = int(targets.max()) + 1
    m, active, r = Moments.zeros(num_classes, x.shape[1]), list(range(num_classes)), 0
    while active:
        idx = plan.round_indices(r, active)
        m = m.merge(Moments.from_batch(x[idx], torch.as_tensor(targets[idx]), num_classes))
        active = plan.still_active(r, active, [m])
        r += 1
    return m


def test_plan_order_is_seeded_per_class_and_cut_to_the_cap():
    a = make_plan(TARGETS, 3, 10, None, 4, seed=5, ipc=1)
    b = make_plan(TARGETS, 3, 10, None, 4, seed=5, ipc=1)
    c = make_plan(TARGETS, 3, 10, None, 4, seed=6, ipc=1)
    assert [len(o) for o in a.orders] == [10, 7, 10]  # class 1 (7 images) is inverted whole
    assert all((x == y).all() for x, y in zip(a.orders, b.orders))
    assert any((x != y).any() for x, y in zip(a.orders, c.orders))
    for cls, order in enumerate(a.orders):
        assert (TARGETS[order] == cls).all() and len(set(order.tolist())) == len(order)
    assert a.rounds == 3
    assert a.round_indices(2, [0, 1, 2]).tolist() == [*a.orders[0][8:10], *a.orders[2][8:10]]


def test_all_is_every_image_in_dataset_order_in_one_round():
    plan = make_plan(TARGETS, 3, "all", 0.2, 4, seed=0, ipc=1)
    assert plan.rounds == 1 and plan.tolerance is None
    assert plan.round_indices(0, [0, 1, 2]).tolist() == list(range(len(TARGETS)))
    assert plan.still_active(0, [0, 1, 2], []) == []


def test_runs_at_other_seeds_share_one_inversion_unless_the_order_follows_the_seed(tmp_path):
    from d3hr.config import load_config, nest
    from d3hr.distillation import invert
    from d3hr.distillation.context import Context

    def key(seed: int, order_seed: int | None) -> str:
        cfg = load_config(None, [nest("data.name", "digits"), nest("seed", seed), nest("invert.seed", order_seed),
                                 nest("out", str(tmp_path / f"r{seed}"))])
        return invert.stage_key(Context(cfg), "generator-key")

    assert key(0, 0) == key(1, 0)
    assert key(0, None) != key(1, None) and key(1, None) == key(1, 1)


def test_relative_errors_follow_the_formulas():
    gen = torch.Generator().manual_seed(0)
    n, ipc = 20000, 10
    normal = torch.randn(n, 64, generator=gen, dtype=torch.float64)
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((n, 64)).to(torch.float64)  # kurtosis 6
    x = torch.cat([normal, laplace])
    m = Moments.from_batch(x, torch.cat([torch.zeros(n), torch.ones(n)]).long(), 2)
    rel = relative_errors(m, ipc)
    base = math.sqrt(ipc / n)
    assert rel[:, 0].tolist() == pytest.approx([base, base]) and rel[:, 2].tolist() == pytest.approx([base, base])
    assert rel[0, 1] == pytest.approx(base, rel=0.05)  # normal: (3 - 1) / 2 = 1
    assert rel[1, 1] == pytest.approx(base * math.sqrt(2.5), rel=0.08)  # Laplace: (6 - 1) / 2 = 2.5
    se = standard_errors(m)
    assert se[0, 0] == pytest.approx(1 / math.sqrt(n), rel=0.02)
    assert se[0, 1] == pytest.approx(1 / math.sqrt(2 * n), rel=0.05)
    assert se[0, 2] == pytest.approx(math.sqrt(6 / n))


def test_rule_stops_a_gaussian_class_at_ipc_over_tolerance_squared():
    targets = np.repeat(np.arange(3), 2000)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(len(targets), 4, generator=gen, dtype=torch.float64)
    x[targets == 2] = torch.distributions.Laplace(0.0, 1.0).sample((2000, 4)).to(torch.float64)
    m = _moments_of(make_plan(targets, 3, "auto", 0.2, 50, seed=0, ipc=10), x, targets)
    counts = m.n.tolist()
    assert 250 <= counts[0] <= 350 and 250 <= counts[1] <= 350  # 10 / 0.2^2 = 250, rounded up to a round end
    assert counts[2] >= 500  # heavier tails need more images
    assert bool((relative_errors(m, 10).max(dim=1).values <= 0.2).all())


def test_cap_and_rule_together_stop_at_whichever_comes_first():
    plan = make_plan(TARGETS, 3, 20, 1e-6, 4, seed=0, ipc=1)
    x = torch.arange(len(TARGETS), dtype=torch.float64)[:, None].repeat(1, 4) ** 1.5
    m = _moments_of(plan, x, TARGETS)
    assert m.n.tolist() == [20, 7, 20]


def test_invert_levels_matches_separate_inversions():
    grid = DDIMGrid.create(make_alphas_cumprod(1000, 1e-4, 0.02, "linear"), 10)
    weight = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))

    def eps_fn(z, t, labels):
        return torch.tanh(torch.einsum("ij,bjhw->bihw", weight, z) * (1 + t / 1000) + labels[:, None, None, None])

    z0 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0.0, 1.0, 2.0])
    got = ddim_invert_levels(eps_fn, z0, labels, grid, [2, 5, 7])
    for k in (2, 5, 7):
        assert torch.equal(got[k], ddim_invert(eps_fn, z0, labels, grid, k))


def test_choose_level_takes_the_first_level_with_most_of_the_reduction_in_skewness():
    # Fashion-MNIST, all 6,000 images per class (bench/results/invert-subsample/depth-ipc10.json): 20
    assert choose_level([10, 15, 20, 25, 31], [0.359, 0.264, 0.227, 0.218, 0.220], 0.9) == 20
    assert choose_level([10, 20, 31, 40], [0.40, 0.27, 0.25, 0.249], 0.9) == 31  # 20 has 87% of the reduction
    assert choose_level([10, 20, 31, 40], [0.40, 0.27, 0.25, 0.249], 0.85) == 20
    assert choose_level([10, 20, 31], [0.20, 0.25, 0.30], 0.9) == 10  # deeper is never more symmetric
    assert choose_level([10, 20, 31], [0.30, 0.30, 0.30], 0.9) == 10
    assert choose_level([10, 20], [math.nan, math.nan], 0.9) == 20


def test_default_candidate_levels_follow_the_ddim_grid():
    from d3hr.config import DiffusionConfig, auto_levels

    assert auto_levels(DiffusionConfig(num_steps=50)) == [10, 15, 20, 25, 31, 40]
    assert auto_levels(DiffusionConfig(num_steps=10)) == [2, 3, 4, 5, 6, 8]
    assert auto_levels(DiffusionConfig(num_steps=10, auto_levels=[3, 7])) == [3, 7]


SETS = [a for s in FAST_TRAIN for a in ("--set", s)]


def _distill(out: Path, *sets: str, ipc: int = 2) -> Path:
    args = ["distill", "--dataset", "digits", "--ipc", str(ipc), *SETS, *(a for s in sets for a in ("--set", s)),
            "--out", str(out)]
    assert main(args) == 0
    return out


def test_cap_is_recorded_per_class_and_independent_of_the_batch_size(tmp_path):
    a = _distill(tmp_path / "a", "invert.per_class=20", "invert.tolerance=null", "diffusion.batch_size=64")
    b = _distill(tmp_path / "b", "invert.per_class=20", "invert.tolerance=null", "diffusion.batch_size=7")
    ta, meta = load_tensors(a / "stats.safetensors")
    tb, _ = load_tensors(b / "stats.safetensors")
    assert ta["count"].tolist() == [20] * 10
    for name in ("mean", "std", "skewness"):
        torch.testing.assert_close(ta[name], tb[name], rtol=1e-5, atol=1e-5)
    rec = read_json(a / "stages.json")["invert"]
    assert rec["images"] == 200 and rec["subsample"]["inverted"] == 200
    assert [c["images"] for c in rec["subsample"]["classes"]] == [20] * 10
    assert all(c["relative_se"]["mean"] == pytest.approx(math.sqrt(2 / 20), abs=1e-4)
               for c in rec["subsample"]["classes"])
    assert meta["subsample"]["per_class"] == 20


def test_rule_stops_early_and_auto_depth_writes_the_chosen_levels_statistics(tmp_path):
    sets = ["invert.tolerance=3", "invert.check_every=10", "diffusion.inversion_steps=auto",
            "diffusion.auto_levels=[2,4,6]"]
    auto = _distill(tmp_path / "auto", *sets, ipc=1)
    rec = read_json(auto / "stages.json")["invert"]
    assert [c["images"] for c in rec["subsample"]["classes"]] == [10] * 10  # sqrt(1/10) * kurtosis factor < 3
    chosen = rec["depth"]["chosen"]
    assert chosen in (2, 4, 6) and rec["inversion_steps"] == chosen and set(rec["depth"]["levels"]) == {"2", "4", "6"}
    assert len(list((auto / "images").rglob("*.png"))) == 10
    fixed = _distill(tmp_path / "fixed", *sets[:2], f"diffusion.inversion_steps={chosen}", ipc=1)
    ta, ma = load_tensors(auto / "stats.safetensors")
    tf, mf = load_tensors(fixed / "stats.safetensors")
    assert ma["inversion_steps"] == mf["inversion_steps"] == chosen
    for name in ("mean", "std", "skewness", "count"):
        assert torch.equal(ta[name], tf[name]), name
    sa, sf = load_tensors(auto / "selection.safetensors")[0], load_tensors(fixed / "selection.safetensors")[0]
    assert sa.keys() == sf.keys() and all(torch.equal(sa[k], sf[k]) for k in sa)  # the same latents chosen
    assert main(["report", str(auto)]) == 0
    html = (auto / "report.html").read_text()
    assert "diffusion.inversion_steps = auto" in html and f"{chosen} (chosen)" in html and "of 600 training" in html
    assert main(["pack", str(auto), "-o", str(tmp_path / "auto.d3hr")]) == 0  # packs the chosen level
    assert main(["unpack", str(tmp_path / "auto.d3hr"), "--out", str(tmp_path / "unpacked")]) == 0
    base_rs = _distill(tmp_path / "base-rs", *sets, "select.method=base-rs", ipc=1)  # the same statistics
    assert read_json(base_rs / "stages.json")["invert"]["key"] == rec["key"]
    assert (base_rs / "stats.safetensors").read_bytes() == (auto / "stats.safetensors").read_bytes()


@pytest.mark.parametrize(("setting", "needle"), [
    ("invert.tolerance=0", "invert.tolerance"),
    ("invert.tolerance=-1", "invert.tolerance"),
    ("invert.per_class=1", "invert.per_class (1) must be >= select.ipc (2)"),
    ("invert.per_class=some", "invert.per_class"),
    ("diffusion.inversion_steps=deep", "diffusion.inversion_steps"),
    ("diffusion.auto_levels=[4,2]", "diffusion.auto_levels"),
    ("diffusion.auto_reach=0", "diffusion.auto_reach"),
])
def test_bad_subsampling_values_are_one_line_errors(tmp_path, capsys, setting, needle):
    sets = [setting] + (["diffusion.inversion_steps=auto"] if "auto_" in setting else [])
    assert main(["distill", "--dataset", "digits", "--ipc", "2", *SETS, *(a for s in sets for a in ("--set", s)),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "r").exists()


def test_auto_depth_is_refused_for_a_method_that_does_not_invert(tmp_path, capsys):
    assert main(["distill", "--dataset", "digits", "--ipc", "2", "--method", "base-ddpm", *SETS,
                 "--set", "diffusion.inversion_steps=auto", "--out", str(tmp_path / "r")]) == 2
    assert "base-ddpm" in capsys.readouterr().err
