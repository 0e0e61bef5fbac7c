"""d3hr compare: a small grid on digits, cached cells, resuming after an interruption."""

import importlib
import json
import os
from pathlib import Path

from d3hr.cli import main
from tests.conftest import FAST_TRAIN

SETS = [a for s in FAST_TRAIN for a in ("--set", s)]


def test_compare_writes_table_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "grid"
    args = ["compare", "--dataset", "digits", "--methods", "d3hr,random-real", "--ipc", "1", "--seeds", "2",
            "--labels", "soft", "--epochs", "2", "--out", str(out), *SETS]
    runner = importlib.import_module("d3hr.evaluate.runner")
    real = runner.train_model
    calls = {"n": 0, "stop_at": 3}

    def counting(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "train_model", counting)
    assert main(args) == 130  # Ctrl-C: one line, and the finished cells are kept
    assert not (out / "results.md").exists()
    calls.update(n=0, stop_at=-1)
    assert main(args) == 0
    assert calls["n"] == 4 - 2  # 4 cells; the two finished before the interruption were not retrained
    table = (out / "results.md").read_text()
    assert "| d3hr |" in table and "| random-real |" in table and "soft IPC 1 (2 ep)" in table
    teacher = json.loads((out / "results.json").read_text())["cells"][0]["teacher"]
    assert f"Full training set (upper bound): convnet trained on all {teacher['train_images']} images" in table
    assert f"{100 * teacher['test_top1']:.1f}%" in table
    result = json.loads((out / "results.json").read_text())
    assert len(result["cells"]) == 4 and {r["n"] for r in result["summary"]} == {2}
    assert (out / "accuracy.png").stat().st_size > 1000
    pointers = {json.loads(p.read_text())["path"] for p in (out / "runs").rglob("generator.json")}
    assert len(pointers) == 1  # every d3hr cell used the same cached generator
    teachers = {Path(r["teacher"]["path"]) for r in result["cells"]}
    assert len(teachers) == 1  # one teacher for every cell, in the cache: nothing written beside the cells
    assert teachers.pop().is_relative_to(Path(os.environ["D3HR_CACHE"]) / "teachers")
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        f"{m}-ipc1-seed{s}" for m in ("d3hr", "random-real") for s in (0, 1))


def test_merge_rows_keeps_earlier_cells_and_replaces_redone_ones():
    from d3hr.compare import merge_rows, summarise

    def row(method, ipc, seed, top1, epochs=300):
        return {"method": method, "ipc": ipc, "seed": seed, "labels": "soft", "sweep": None, "student": "convnet",
                "epochs": epochs, "top1": top1}

    old = [row("d3hr", 10, 0, 0.5), row("d3hr", 10, 1, 0.6), row("d3hr", 50, 0, 0.7, epochs=100)]
    new = [row("d3hr", 10, 1, 0.8), row("base-rs", 10, 0, 0.4)]
    merged = merge_rows(old, new)
    assert [(r["method"], r["ipc"], r["seed"], r["top1"]) for r in merged] == [
        ("d3hr", 10, 0, 0.5), ("d3hr", 50, 0, 0.7), ("d3hr", 10, 1, 0.8), ("base-rs", 10, 0, 0.4)]
    table = {(r["method"], r["ipc"], r["epochs"]): r for r in summarise(merged)}
    assert table[("d3hr", 10, 300)]["n"] == 2 and abs(table[("d3hr", 10, 300)]["mean"] - 65.0) < 1e-9
    assert table[("d3hr", 50, 100)]["n"] == 1


def test_parse_sweep_accepts_comma_lists_and_yaml_lists():
    from d3hr.compare import parse_sweep

    assert parse_sweep("diffusion.inversion_steps=10,20,31,40") == ("diffusion.inversion_steps", [10, 20, 31, 40])
    assert parse_sweep("select.pools=1") == ("select.pools", [1])
    assert parse_sweep("diffusion.guidance_scale=[1.0, 1.5]") == ("diffusion.guidance_scale", [1.0, 1.5])
    assert parse_sweep("select.pools=null,1") == ("select.pools", [None, 1])


def test_accuracy_plot_has_one_panel_per_label_mode(tmp_path):
    from PIL import Image

    from d3hr.compare import plot_accuracy

    def row(method, labels, ipc, mean, sweep=None):
        return {"method": method, "ipc": ipc, "labels": labels, "sweep": sweep, "epochs": 2, "n": 3, "mean": mean,
                "std": 1.0}

    soft = [row("d3hr", "soft", i, 60 + i) for i in (1, 10, 50)] + [row("d3hr", "soft", 10, 70, ["select.pools", 1])]
    hard = [row("d3hr", "hard", i, 50 + i) for i in (1, 10, 50)]
    plot_accuracy(soft, tmp_path / "one.png")
    plot_accuracy(soft + hard, tmp_path / "two.png")
    one, two = Image.open(tmp_path / "one.png").size, Image.open(tmp_path / "two.png").size
    assert two[0] > one[0] + 300 and abs(two[1] - one[1]) < 40  # a second panel beside the first, same height
