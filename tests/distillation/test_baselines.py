"""Baselines: the pure functions, and every method through ``d3hr distill --method`` on digits (fast settings)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d3hr.cli import main
from d3hr.config import DataConfig
from d3hr.data import load_dataset
from d3hr.diffusion import DDIMGrid, forward_noise
from d3hr.diffusion.ddim import make_alphas_cumprod
from d3hr.distillation.baselines import (
    herding_indices,
    kmeans_centroids,
    penultimate_features,
    random_subset,
)
from d3hr.evaluation.runner import read_run_images
from d3hr.evaluation.students import ConvNet
from d3hr.evaluation.teacher import get_teacher
from d3hr.generator.model import SMALL_SCHEDULE
from d3hr.utils.io import load_tensors
from tests.conftest import FAST_TRAIN

IPC = 5
METHODS = ["random-real", "herding", "kmeans-latent", "base-ddpm", "base-rs"]
NO_GENERATOR = {"random-real", "herding"}

pytestmark = pytest.mark.usefixtures("one_thread")


# ----- pure functions ------------------------------------------------------------------------------------------
def test_herding_mean_is_closer_to_the_class_mean_than_random_subsets():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 16, generator=g) * torch.linspace(0.5, 2.0, 16) + 3.0  # (n, D)
    mu = feats.mean(0)
    chosen = herding_indices(feats, 10)
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10
    herd = (feats[chosen].mean(0) - mu).norm()
    rand = torch.stack([(feats[torch.randperm(200, generator=g)[:10]].mean(0) - mu).norm() for _ in range(100)])
    assert herd < rand.min() and herd < 0.25 * rand.median()
    assert torch.equal(herding_indices(feats, 10), chosen)  # deterministic
    assert torch.equal(herding_indices(feats, 3), chosen[:3])  # greedy: a prefix of the longer selection
    assert sorted(herding_indices(feats[:4], 10).tolist()) == [0, 1, 2, 3]  # k > n: every row once


def test_herding_toward_a_given_target_tracks_it_not_the_rows_mean():
    """d3hr-herd herds generated rows toward the mean of real ones: a target away from the rows' own mean."""
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(300, 8, generator=g)  # (n, D), mean about 0
    target = torch.full((8,), 0.6)
    to_target = herding_indices(feats, 10, target=target)
    to_own = herding_indices(feats, 10)
    assert (feats[to_target].mean(0) - target).norm() < 0.35 < 1.5 < (feats[to_own].mean(0) - target).norm()
    assert int(herding_indices(feats, 1, target=feats[17])[0]) == 17  # the row at the target comes first
    assert torch.equal(herding_indices(feats, 10, target=feats.mean(0)), to_own)  # the default target


def test_kmeans_returns_k_centroids_deterministically():
    g = torch.Generator().manual_seed(1)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centers[:, None, :] + 0.1 * torch.randn(3, 30, 2, generator=g)).reshape(90, 2)  # (n, D): three blobs
    c = kmeans_centroids(x, 3, seed=7)
    assert c.shape == (3, 2) and c.dtype == torch.float32
    assert torch.equal(kmeans_centroids(x, 3, seed=7), c)
    nearest = torch.cdist(centers, c).min(dim=1).values  # each true center has a centroid next to it
    assert nearest.max() < 0.1
    assert kmeans_centroids(x, 5, seed=2**40 + 3).shape == (5, 2)  # any 63-bit derived seed is accepted


def test_forward_noise_matches_the_forward_marginal():
    grid = DDIMGrid.create(make_alphas_cumprod(**SMALL_SCHEDULE), 50)
    g = torch.Generator().manual_seed(2)
    z0, eps = torch.randn(4, 4, 4, 4, generator=g), torch.randn(4, 4, 4, 4, generator=g)
    a = float(grid.alphas[31])
    torch.testing.assert_close(forward_noise(z0, a, eps), a**0.5 * z0 + (1 - a) ** 0.5 * eps)
    assert torch.equal(forward_noise(z0, 1.0, eps), z0)
    zk = forward_noise(torch.zeros(100_000), a, torch.randn(100_000, generator=g))
    assert abs(float(zk.var()) - (1 - a)) < 0.01


def test_random_subset_is_seeded_distinct_and_per_class():
    a = random_subset(50, 10, seed=0, c=3)
    assert len(set(a.tolist())) == 10 and int(a.max()) < 50
    assert torch.equal(random_subset(50, 10, seed=0, c=3), a)
    assert not torch.equal(random_subset(50, 10, seed=0, c=4), a)
    assert not torch.equal(random_subset(50, 10, seed=1, c=3), a)
    assert sorted(random_subset(4, 10, seed=0, c=0).tolist()) == [0, 1, 2, 3]


def test_penultimate_features_are_the_input_of_the_last_linear_layer():
    torch.manual_seed(0)
    model = ConvNet(10, 1, 8).eval()
    images = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        expected = model.features(images.float() / 127.5 - 1).flatten(1)  # (N, 128)
    torch.testing.assert_close(penultimate_features(model, images), expected)


# ----- through the CLI -----------------------------------------------------------------------------------------
def _distill(run: Path, method: str, *more: str) -> int:
    sets = [a for s in (*FAST_TRAIN, *more) for a in ("--set", s)]
    return main(["distill", "--dataset", "digits", "--ipc", str(IPC), "--method", method, "--out", str(run), *sets])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A folder for sibling runs; a 2-epoch teacher in herding's cache (herding must reuse it, not train its own)."""
    root = tmp_path_factory.mktemp("baselines")
    get_teacher(DataConfig(name="digits"), load_dataset(DataConfig(name="digits"), "test"),
                epochs=2, cache=root / "cache-herding")
    return root


@pytest.fixture(scope="module", params=METHODS)
def method_run(request, root) -> tuple[str, Path]:
    """One distilled run per method; methods without a generator get an empty generator cache of their own."""
    method, run = request.param, root / request.param
    with pytest.MonkeyPatch.context() as mp:
        if method in NO_GENERATOR:
            mp.setenv("D3HR_CACHE", str(root / f"cache-{method}"))
        assert _distill(run, method) == 0
    return method, run


def test_every_method_writes_ipc_images_per_class_and_a_manifest(method_run, root):
    method, run = method_run
    folders = sorted(p.name for p in (run / "images").iterdir())
    assert folders == [f"{i}_{i}" for i in range(10)]
    for f in folders:
        pngs = sorted((run / "images" / f).glob("*.png"))
        assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(IPC)]
        with Image.open(pngs[0]) as im:
            assert im.size == (8, 8) and im.mode == "L"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["ipc"] == IPC
    assert "images/0_0/00000.png" in manifest["files"]
    stages = json.loads((run / "stages.json").read_text())
    assert ("invert" in stages) == (run / "stats.safetensors").exists() == (method == "base-rs")
    assert ("generator" in stages) == (method not in NO_GENERATOR)
    if method in NO_GENERATOR:
        assert not (root / f"cache-{method}" / "generators").exists()  # no generator trained or loaded
    else:
        assert Path(stages["generator"]["path"]).is_relative_to(os.environ["D3HR_CACHE"])  # the cache in use
    assert (manifest["generator"] is None) == (method in NO_GENERATOR)
    test = load_dataset(DataConfig(name="digits"), "test")
    images, targets, _ = read_run_images(run, test, manifest)  # what `d3hr evaluate RUN` trains on
    assert images.shape == (10 * IPC, 1, 8, 8) and torch.equal(targets.bincount(), torch.full((10,), IPC))


def test_rerun_skips(method_run, capsys, monkeypatch):
    method, run = method_run
    monkeypatch.setenv("D3HR_QUIET", "0")
    if method in NO_GENERATOR:
        monkeypatch.setenv("D3HR_CACHE", str(run.parent / f"cache-{method}"))
    mtimes = {p: p.stat().st_mtime_ns for p in run.rglob("*.png")}
    capsys.readouterr()
    assert _distill(run, method) == 0
    err = capsys.readouterr().err
    assert "[select] unchanged, skipped" in err and "[generate] unchanged, skipped" in err
    assert "training" not in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.png")} == mtimes


def test_method_details(method_run):
    method, run = method_run
    sel, meta = load_tensors(run / "selection.safetensors")
    details = json.loads((run / "manifest.json").read_text())["method_details"]
    ds = load_dataset(DataConfig(name="digits", limit=600), "train")
    members = [torch.as_tensor(np.flatnonzero(ds.targets == c)) for c in range(10)]
    seeded = torch.stack([m[random_subset(len(m), IPC, 0, c)] for c, m in enumerate(members)])  # (C, ipc), seed 0
    if method in ("random-real", "herding"):
        assert set(sel) == {"count", "image_index"} and sel["image_index"].shape == (10, IPC)
        idx = sel["image_index"]
        assert (torch.as_tensor(ds.targets)[idx] == torch.arange(10)[:, None]).all()  # each class's own images
        assert torch.equal(idx, seeded) == (method == "random-real")
        with Image.open(run / "images" / "3_3" / "00002.png") as im:  # copied as they are
            assert np.array_equal(np.asarray(im), ds.load([int(idx[3, 2])])[0, 0].numpy())
    if method == "herding":
        assert "penultimate" in details["features"] and details["teacher_epochs"] == 2  # the cached teacher
    if method == "kmeans-latent":
        assert sel["latents"].shape == (10, IPC, 4, 4, 4) and details["level"] == 0
    if method == "base-ddpm":
        assert torch.equal(sel["image_index"], seeded)  # the same real images as random-real
        assert details["level"] == 6 and sel["latents"].shape == (10, IPC, 4, 4, 4)
    if method == "base-rs":
        assert meta["strategy"] == "random" and int(sel["index"].abs().sum()) == 0


def test_herding_selects_with_the_teacher_of_select_teacher_epochs(root, monkeypatch):
    """select.teacher_epochs picks the teacher herding selects with (compare --teacher-epochs sets it, so that a
    grid's herding cells and soft labels name one teacher); the default takes the cached one with the most epochs."""
    monkeypatch.setenv("D3HR_CACHE", str(root / "cache-herding"))
    run = root / "herding-teacher-1"
    assert _distill(run, "herding", "select.teacher_epochs=1") == 0
    details = json.loads((run / "manifest.json").read_text())["method_details"]
    two = get_teacher(DataConfig(name="digits"), load_dataset(DataConfig(name="digits"), "test"), epochs=2,
                      cache=root / "cache-herding")[1]
    assert details["teacher_epochs"] == 1 and details["teacher"] != two["path"]  # not the cached 2-epoch one
    assert main(["evaluate", str(run), "--labels", "hard", "--seeds", "1", "--epochs", "1"]) == 0
    record = json.loads((run / "eval" / "results.json").read_text())["records"][0]
    assert record["selection_teacher_sha256"] == details["teacher_sha256"] != two["sha256"]  # what compare pairs on
    assert record["generator_sha256"] is None and record["teacher_sha256"] is None  # real images, hard labels


def test_same_seed_same_images(method_run, monkeypatch):
    method, run = method_run
    again = run.with_name(f"{method}-again")
    if method in NO_GENERATOR:
        monkeypatch.setenv("D3HR_CACHE", str(run.parent / f"cache-{method}"))
    assert _distill(again, method) == 0
    files = [json.loads((r / "manifest.json").read_text())["files"] for r in (run, again)]
    images = [{k: v for k, v in f.items() if k.startswith("images/")} for f in files]
    assert len(images[0]) == 10 * IPC and images[0] == images[1]


def test_switching_base_rs_to_d3hr_reuses_the_statistics(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert _distill(run, "base-rs") == 0
    monkeypatch.setenv("D3HR_QUIET", "0")
    capsys.readouterr()
    assert _distill(run, "d3hr") == 0
    err = capsys.readouterr().err
    assert "[invert] unchanged, skipped" in err and "[select] unchanged" not in err
    assert json.loads((run / "manifest.json").read_text())["method"] == "d3hr"


def test_full_and_unknown_methods_give_one_line_errors(tmp_path, capsys):
    assert main(["distill", "--out", str(tmp_path / "x"), "--method", "full"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("d3hr: error: ") and "not a distilled set" in err and "\n" not in err
    assert main(["distill", "--out", str(tmp_path / "x"), "--method", "herd"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("d3hr: error: select.method must be one of d3hr, base-rs, random-real, herding, kmeans-latent, "
                   "base-ddpm, d3hr-herd, got 'herd'")
    assert not (tmp_path / "x" / "config.yaml").exists()


def test_herding_selects_again_when_the_teacher_changes(root, tmp_path, monkeypatch, capsys):
    """The teacher's weights are part of herding's key: a newer teacher in the cache is not skipped over."""
    import shutil

    cache, run = tmp_path / "cache", tmp_path / "herding"
    shutil.copytree(root / "cache-herding", cache)
    monkeypatch.setenv("D3HR_CACHE", str(cache))
    assert _distill(run, "herding") == 0
    before = json.loads((run / "manifest.json").read_text())["method_details"]["teacher_sha256"]
    get_teacher(DataConfig(name="digits"), load_dataset(DataConfig(name="digits"), "test"), epochs=3, cache=cache)
    monkeypatch.setenv("D3HR_QUIET", "0")
    capsys.readouterr()
    assert _distill(run, "herding") == 0
    assert "[select] unchanged" not in capsys.readouterr().err
    after = json.loads((run / "manifest.json").read_text())["method_details"]["teacher_sha256"]
    assert after != before


def _class_hashes(run: Path) -> list[list[str]]:
    """Per class folder, the sorted sha256 of its PNGs' bytes: the images as a set, whatever their order."""
    import hashlib

    return [sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in f.glob("*.png"))
            for f in sorted((run / "images").iterdir())]


def test_d3hr_herd_keeps_the_pool_members_that_track_the_real_class_mean(root, tmp_path, monkeypatch):
    """d3hr-herd: IPC images per class out of a generated pool of herd_pool x IPC, chosen by herding on the teacher's
    features toward the real class mean (closer to it than pool members taken as drawn); with a pool of IPC it keeps
    D3HR's own group, image for image."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(root / "cache-herding", cache)  # the 2-epoch teacher; the generator is trained here
    monkeypatch.setenv("D3HR_CACHE", str(cache))
    run = tmp_path / "herd"
    assert _distill(run, "d3hr-herd", "select.herd_pool=4") == 0
    sel, meta = load_tensors(run / "selection.safetensors")
    assert sel["latents"].shape == (10, IPC, 4, 4, 4) and meta["herd_pool"] == 4
    index = sel["pool_index"]  # (C, ipc) positions in the pool of 4 x IPC
    assert index.shape == (10, IPC) and int(index.min()) >= 0 and int(index.max()) < 4 * IPC
    assert all(len(set(row.tolist())) == IPC for row in index)
    details = json.loads((run / "manifest.json").read_text())["method_details"]
    assert details["teacher_epochs"] == 2 and details["pool"] == 4 * IPC
    gap = details["feature_gap"]
    assert gap["herded"] < gap["first_ipc"]
    assert gap["herded"] < gap["pool"]  # toward the real mean, past the pool's own mean (herding's default target)
    herded, drawn = details["feature_gap_per_class"]["herded"], details["feature_gap_per_class"]["first_ipc"]
    assert sum(h < d for h, d in zip(herded, drawn)) >= 8  # herding wins in (nearly) every class
    assert [len(h) for h in _class_hashes(run)] == [IPC] * 10
    same, d3hr = tmp_path / "pool-of-ipc", tmp_path / "d3hr"
    assert _distill(same, "d3hr-herd", "select.herd_pool=1") == 0
    assert _distill(d3hr, "d3hr") == 0
    assert _class_hashes(same) == _class_hashes(d3hr)  # the same group, only reordered by herding
