"""Set-quality metrics on sets with known answers (d3hr.evaluation.set_metrics), and `d3hr metrics` on a digits run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from d3hr.errors import D3HRError
from d3hr.evaluation.set_metrics import diversity, fid, frechet_distance, knn_radii, prdc
from d3hr.utils.io import read_json

from .conftest import IPC, TEACHER_EPOCHS


def _gauss(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_fid_of_a_set_with_itself_is_zero_even_with_fewer_samples_than_dimensions():
    for n, d in ((500, 8), (10, 64)):  # the second: singular covariance, as a class of an IPC-10 set
        x = _gauss(n, d, 0) * 3 + 5
        assert fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    mu1, mu2 = torch.zeros(3, dtype=torch.float64), torch.tensor([1.0, 2.0, -2.0], dtype=torch.float64)
    a, b = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64), torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64)
    # diagonal covariances: ||mu1 - mu2||^2 + sum(a + b - 2 sqrt(ab)) = 9 + (1 + 1 + 0)
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(11.0, abs=1e-10)
    # full, non-commuting covariances: tr(S1 + S2 - 2 sqrtm(S1 S2)), scipy's sqrtm as the reference
    from scipy.linalg import sqrtm

    g1, g2 = _gauss(5, 5, 1), _gauss(5, 5, 2)
    s1, s2 = g1 @ g1.T + 0.1 * torch.eye(5, dtype=torch.float64), g2 @ g2.T
    want = float(np.trace(s1.numpy() + s2.numpy() - 2 * sqrtm(s1.numpy() @ s2.numpy()).real))
    assert frechet_distance(mu1[:1].repeat(5), s1, mu1[:1].repeat(5), s2) == pytest.approx(want, rel=1e-8)


def test_fid_of_samples_approaches_the_closed_form():
    x = _gauss(20000, 3, 3) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    y = _gauss(20000, 3, 4) * torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0])
    assert fid(x, y) == pytest.approx(1.0 + 1.0 + 0.0 + 4.0, rel=0.05)  # |dmu|^2 + sum (s1 - s2)^2 per axis


def test_prdc_of_a_set_with_itself():
    x = _gauss(60, 8, 5)
    out = prdc(x, x, k=5)
    assert out == {"precision": 1.0, "recall": 1.0, "coverage": 1.0, "density": pytest.approx(1.0)}


def test_prdc_and_diversity_of_duplicates_of_one_real_point_by_hand():
    real = torch.tensor([[0.0], [1.0], [3.0], [7.0], [15.0]])
    fake = real[:1].repeat(3, 1)  # three copies of the real point 0
    # k = 1: radii 1, 1, 2, 4, 8; only the ball of 0 holds 0 (1 < 1 is false); the fake radii are 0.
    assert knn_radii(real, 1).tolist() == [1.0, 1.0, 2.0, 4.0, 8.0]
    assert prdc(real, fake, k=1) == {"precision": 1.0, "recall": 0.0, "density": 1.0, "coverage": 0.2}
    # k = 2: radii 3, 2, 3, 6, 12; the balls of 0 and 1 hold 0 -> density 2 / 2, coverage 2 / 5.
    assert knn_radii(real, 2).tolist() == [3.0, 2.0, 3.0, 6.0, 12.0]
    assert prdc(real, fake, k=2) == {"precision": 1.0, "recall": 0.0, "density": 1.0, "coverage": 0.4}
    assert diversity(fake) == 0.0


def test_diversity_is_the_mean_pairwise_distance():
    assert diversity(torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])) == pytest.approx(4.0)  # (3 + 4 + 5) / 3


def test_k_not_below_the_sample_count_is_one_line_error():
    real, fake = _gauss(5, 3, 6), _gauss(8, 3, 7)
    with pytest.raises(D3HRError, match="k=5 needs at least 6 real"):
        prdc(real, fake, k=5)
    with pytest.raises(D3HRError, match="k=8 need at least 9"):
        knn_radii(fake, 8)
    assert prdc(fake, real, k=5)["recall"] is None  # 5 fake points have no 5th neighbour among themselves
    with pytest.raises(D3HRError, match="differ in dimension"):
        prdc(real, _gauss(8, 4, 8), k=2)


def test_prdc_matches_the_prdc_package():
    compute_prdc = pytest.importorskip("prdc").compute_prdc
    real, fake = _gauss(300, 16, 9), _gauss(120, 16, 10) * 1.3 + 0.2
    want = compute_prdc(real.numpy(), fake.numpy(), 5)
    got = prdc(real, fake, k=5)
    assert got == pytest.approx({k: float(v) for k, v in want.items()}, abs=1e-12)


def test_metrics_command_on_a_digits_run(run_dir: Path, capsys, monkeypatch) -> None:
    import d3hr
    from d3hr.cli import main
    from d3hr.evaluation import set_quality
    from d3hr.evaluation.teacher import load_teacher, weights_sha256

    argv = ["metrics", str(run_dir), "--teacher-epochs", str(TEACHER_EPOCHS), "--k", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "k = 3" in out and "metrics.json" in out
    res = read_json(run_dir / "eval" / "metrics.json")
    (teacher,) = (Path(os.environ["D3HR_CACHE"]) / "teachers").glob(f"*/convnet-*-{TEACHER_EPOCHS}ep.safetensors")
    assert res["features"]["sha256"] == weights_sha256(load_teacher(teacher)[0]) and res["features"]["dim"] == 128
    assert res["k"] == 3 and res["real"]["train_images"] == 1437 and sum(res["real"]["per_class"]) == 1437
    assert res["overall"]["n_real"] == 1437 and res["overall"]["n_fake"] == 10 * IPC
    for c, v in res["classes"].items():
        assert v["n_fake"] == IPC and v["n_real"] == res["real"]["per_class"][int(c)]
        assert v["precision"] == 1.0  # the run's images are training images: each lies in its own k-NN ball
        assert 0 < v["coverage"] < 1 and v["recall"] is not None and v["fid"] > 0
        assert 0 < v["diversity"] and 0 < v["real_diversity"]
    assert res["overall"]["diversity"] == pytest.approx(np.mean([v["diversity"] for v in res["classes"].values()]))

    # Unchanged inputs: not recomputed; other settings: recomputed, with the counts they gave.
    monkeypatch.setattr(set_quality, "fid_prdc", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert main(argv) == 0
    monkeypatch.undo()
    small = d3hr.metrics(run_dir, k=5, real_per_class=20, real_max=50, teacher_epochs=TEACHER_EPOCHS)
    assert small["real"]["per_class"] == [20] * 10 and small["overall"]["n_real"] == 50
    assert all(v["recall"] is None for v in small["classes"].values())  # IPC 5 <= k: no 5th fake neighbour
    assert read_json(run_dir / "eval" / "metrics.json")["key"] == small["key"] != res["key"]


def test_inception_without_its_packages_is_one_line_error(run_dir: Path, capsys, monkeypatch) -> None:
    from d3hr.cli import main

    assert main(["metrics", str(run_dir), "--inception", str(run_dir / "none.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
    weights = run_dir.parent / "inception.pth"
    weights.write_bytes(b"not used")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # importing it raises ImportError
    assert main(["metrics", str(run_dir), "--inception", str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'torchmetrics[image]>=1.7'" in err
    assert not (run_dir / "eval" / "metrics.json").exists()
