"""write_report on a hand-built run folder (no diffusion): escaping, embedded images, results, missing parts."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d3hr.config import Config
from d3hr.errors import D3HRError
from d3hr.evaluation.results import append_record
from d3hr.report import write_report
from d3hr.runfolder import safe_class_dir
from d3hr.utils.io import save_tensors, write_json, write_text

CLASSES = ["cat", "<script>x</script>", "Tom & Jerry"]
IPC, SIDE, DIM = 3, 8, 16
PNG = "data:image/png;base64,"


def make_run(root: Path, stats: bool = True, results: bool = True) -> Path:
    """A run folder as the pipeline leaves it, written by hand: manifest, config, stages, images, stats, eval."""
    folders = [f"{i}_{safe_class_dir(name)}" for i, name in enumerate(CLASSES)]
    rng = np.random.default_rng(0)
    for folder in folders:
        (root / "images" / folder).mkdir(parents=True)
        for i in range(IPC):
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)).save(
                root / "images" / folder / f"{i:05d}.png")
    cfg = Config(out=str(root))
    write_text(root / "config.yaml", cfg.to_yaml())
    stages = {"generator": {"key": "a", "seconds": 12.5, "peak_rss_mb": 800.0},
              "generate": {"key": "d", "seconds": 3.25, "peak_rss_mb": 900.0, "images": 9}}
    if stats:
        before = {"mean_abs_skewness": 0.812, "mean_abs_excess_kurtosis": 1.934, "share_normal": 0.21}
        after = {"mean_abs_skewness": 0.043, "mean_abs_excess_kurtosis": 0.067, "share_normal": 0.93}
        stages["invert"] = {"key": "b", "seconds": 40.0, "peak_rss_mb": 850.0, "normality_z0": before,
                            "normality_zk": after}
        stages["select"] = {"key": "c", "seconds": 1.5, "peak_rss_mb": 860.0, "mean_loss": 0.1234,
                            "mean_loss_gain_over_first": 0.456, "short_classes": {}}
        g = torch.Generator().manual_seed(0)
        tensors = {name: torch.randn(len(CLASSES), DIM, generator=g) for name in ("mean", "skewness")}
        tensors |= {"std": torch.rand(len(CLASSES), DIM, generator=g) + 0.5,
                    "excess_kurtosis": torch.randn(len(CLASSES), DIM, generator=g) * 0.1,
                    "count": torch.full((len(CLASSES),), 60, dtype=torch.int64),
                    "z0.mean": torch.randn(len(CLASSES), DIM, generator=g),
                    "z0.std": torch.rand(len(CLASSES), DIM, generator=g) + 0.5,
                    "z0.skewness": torch.randn(len(CLASSES), DIM, generator=g) + 1.0,
                    "z0.excess_kurtosis": torch.randn(len(CLASSES), DIM, generator=g).exp() * 2}
        save_tensors(root / "stats.safetensors", tensors,
                     {"key": "b", "classes": CLASSES, "latent_shape": [1, 4, 4], "inversion_steps": 31,
                      "num_steps": 50, "guidance_scale": 1.0, "normality_z0": before, "normality_zk": after})
    else:  # a baseline: its select record has details, no group loss
        stages["select"] = {"key": "c", "seconds": 0.1, "short_classes": {"cat": 2},
                            "details": {"images": "uniform <without> replacement"}}
    write_json(root / "stages.json", stages)
    write_json(root / "manifest.json", {
        "format_version": 1, "dataset": {"name": "digits", "root": None, "limit": None, "image_size": None},
        "classes": {str(i): name for i, name in enumerate(CLASSES)}, "class_folders": folders,
        "method": "d3hr" if stats else "random-real", "ipc": IPC, "seeds": {"seed": 7}, "generator": None,
        "versions": {"d3hr": "0.1.0"}, "stages": stages, "files": {}})
    if results:
        teacher = {"arch": "convnet", "epochs": 30, "train_images": 1437, "test_top1": 0.9725}
        base = {"student": "convnet", "labels": "soft", "teacher": "convnet", "epochs": 5, "images_sha256": "ab" * 32,
                "setup": {"lr": 1e-3}}
        for seed, top1 in enumerate((0.80, 0.83)):
            append_record(root / "eval" / "results.json", {**base, "seed": seed, "top1": top1},
                          {"dataset": "digits", "classes": CLASSES, "method": "d3hr", "ipc": IPC}, teacher)
    return root


def test_report_has_every_part(tmp_path: Path) -> None:
    out = write_report(make_run(tmp_path / "run"))
    assert out == tmp_path / "run" / "report.html"
    page = out.read_text(encoding="utf-8")
    for name in CLASSES:
        assert f"<th>{name.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}</th>" in page
    assert "<script" not in page
    assert all(src.startswith(PNG) for src in re.findall(r'src="([^"]*)"', page))  # nothing external
    assert page.count(PNG) == len(CLASSES) + 2  # one image row per class, skewness and kurtosis histograms
    row = re.search(r'src="data:image/png;base64,([^"]+)" alt="cat"', page).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(row))).size == (10 * SIDE, SIDE)  # 3 images + 7 empty tiles
    assert "81.50 ± 2.12" in page and "97.25%" in page  # mean ± sample std of 80 and 83; the teacher
    assert "0.812" in page and "0.043" in page and "93.0%" in page  # normality before -> after
    assert "0.1234" in page and "45.6%" in page  # selection: mean loss, gain over one random group
    assert "digits" in page and "d3hr" in page and ">7<" in page and "40.0" in page  # header, seed, timings
    assert not [p for p in out.parent.iterdir() if ".tmp" in p.name]


def test_report_without_eval_or_stats(tmp_path: Path) -> None:
    page = write_report(make_run(tmp_path / "run", stats=False, results=False), max_classes=2).read_text("utf-8")
    assert page.count(PNG) == 2 and "The first 2 of 3 classes are shown." in page
    assert "No results yet" in page and "No inversion statistics" in page
    assert "random-real: no group loss" in page and "uniform &lt;without&gt; replacement" in page and "cat (2)" in page


def test_report_is_rewritten(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", results=False)
    assert "No results yet" in write_report(run).read_text(encoding="utf-8")
    make_run(tmp_path / "other")
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_bytes((tmp_path / "other" / "eval" / "results.json").read_bytes())
    assert "81.50 ± 2.12" in write_report(run).read_text(encoding="utf-8")


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(D3HRError, match="run folder not found") as err:
        write_report(tmp_path / "missing")
    assert "\n" not in str(err.value)
    with pytest.raises(D3HRError, match="no manifest.json"):
        write_report(tmp_path)
