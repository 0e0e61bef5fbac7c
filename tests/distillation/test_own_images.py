"""A user's own folder of small grayscale images: shape inferred, budgets in steps, the quality readout."""

import numpy as np
import pytest
import torch
from PIL import Image

from d3hr.cli import main
from d3hr.config import VAEConfig, load_config
from d3hr.generator import build_small
from d3hr.generator.train import heldout_split, train_vae
from d3hr.utils.io import read_json


def _gray_folder(root, classes=("coat", "shoe", "tee"), per_class=(10, 3), side=28):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = np.clip(rng.normal(60 + 70 * c, 30, (side, side)), 0, 255).astype(np.uint8)
                Image.fromarray(img, mode="L").save(root / split / name / f"{i:03d}.png")
    return root


FAST = ["--set", "generator.vae.steps=2", "--set", "generator.dit.steps=2", "--set", "select.candidates=64",
        "--set", "diffusion.num_steps=10", "--set", "diffusion.inversion_steps=3"]


def test_gray_28px_folder_distills_to_28px_grayscale_pngs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("D3HR_QUIET", "0")
    data = _gray_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["distill", "--dataset", "imagefolder", "--root", str(data), "--ipc", "2", *FAST,
                 "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "[data] 30 images, 28x28 L -> generator 32x32, 1 channel, fit pad" in err
    pngs = sorted((run / "images").rglob("*.png"))
    assert len(pngs) == 6
    assert {(Image.open(p).size, Image.open(p).mode) for p in pngs} == {((28, 28), "L")}
    cfg = load_config(run / "config.yaml")
    assert (cfg.data.resolution, cfg.data.channels, cfg.data.image_size, cfg.data.fit) == (28, 1, 32, "pad")
    assert cfg.generator.vae.block_out_channels == [32, 64, 64] and cfg.generator.dit.patch_size == 2
    assert (cfg.generator.vae.steps, cfg.generator.vae.epochs) == (2, None)
    quality = read_json(run / "stages.json")["generator"]["quality"]
    assert quality["vae_steps"] == 2 and quality["dit_steps"] == 2 and quality["vae_heldout_images"] == 1
    assert 0 < quality["vae_psnr_db"] < 20 and quality["dit_final_loss"] > 0
    assert "raise generator.vae.steps (now 2)" in err  # two steps cannot reconstruct: the warning names the key


def test_vae_trains_exactly_its_step_budget_and_never_on_held_out_images(monkeypatch):
    from d3hr.config import DataConfig
    from d3hr.data import load_dataset

    ds = load_dataset(DataConfig("digits", limit=100), "train")
    gen = build_small(10, 1, 8, [8, 16], 4, 1, 1, 2, 8, 1)
    steps, seen = [], []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    load = type(ds).load
    monkeypatch.setattr(type(ds), "load", lambda self, idx: seen.extend(np.asarray(idx).tolist()) or load(self, idx))
    fit_idx, heldout = heldout_split(len(ds), 0)
    assert len(heldout) == 5 and not set(fit_idx) & set(heldout)
    losses, _ = train_vae(gen, ds, VAEConfig(steps=5, batch_size=32), 8, "pad", 0, "fp32", train_idx=fit_idx)
    assert len(steps) == 5 and len(losses) == 2  # 3 steps per epoch over 95 images: one whole epoch, then 2 steps
    assert set(seen) <= set(fit_idx.tolist())


@pytest.mark.parametrize("flag", ["--image-size", "--set"])
def test_image_size_override_still_wins(tmp_path, flag):
    data = _gray_folder(tmp_path / "data", per_class=(4, 1), side=20)
    value = ["--image-size", "16"] if flag == "--image-size" else ["--set", "data.image_size=16"]
    assert main(["train-generator", "--dataset", "imagefolder", "--root", str(data), *value, *FAST,
                 "--out", str(tmp_path / "run")]) == 0
    cfg = load_config(tmp_path / "run" / "config.yaml")
    assert (cfg.data.image_size, cfg.data.resolution, cfg.data.fit) == (16, 16, "resize")
