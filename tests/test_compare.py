"""d3hr compare: a small grid on digits, cached cells, resuming after an interruption."""

import importlib
import json
import os
from pathlib import Path

import pytest

from d3hr.cli import main
from d3hr.evaluation.recipes import get_recipe
from d3hr.generator.model import generator_sha256
from d3hr.utils.dist import kernels
from tests.conftest import FAST_TRAIN

SETS = [a for s in FAST_TRAIN for a in ("--set", s)]


def test_compare_writes_table_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("D3HR_CACHE", str(tmp_path / "cache"))  # its own teacher: the recipe's epochs
    out = tmp_path / "grid"
    args = ["compare", "--dataset", "digits", "--methods", "d3hr,random-real", "--ipc", "1", "--seeds", "2",
            "--labels", "soft", "--epochs", "2", "--out", str(out), *SETS]
    runner = importlib.import_module("d3hr.evaluation.runner")
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
    assert "| d3hr |" in table and "| random-real |" in table and "soft (rded) IPC 1 (2 ep)" in table
    teacher = json.loads((out / "results.json").read_text())["cells"][0]["teacher"]
    epochs = get_recipe("teacher").epochs
    assert f"Soft-label teacher: convnet, recipe teacher, {epochs} epochs on {teacher['train_images']} images" in table
    assert f"{100 * teacher['test_top1']:.1f}% test top-1, weights sha256 {teacher['sha256'][:12]}" in table
    assert "| random-real | rded | 1 | 2 |  | 0.0 ± 0.0 |" in table  # IOR of random real is 0 by definition
    result = json.loads((out / "results.json").read_text())
    assert len(result["cells"]) == 4 and {r["n"] for r in result["summary"]} == {2}
    for r in result["cells"]:  # each row names the set it trained on, as its run's own record does
        record = json.loads((Path(r["run"]) / "eval" / "results.json").read_text())["records"][0]
        assert r["images_sha256"] == record["images_sha256"] and len(r["images_sha256"]) == 64
        assert r["kernels"] == record["kernels"] == kernels("cpu")  # the instruction set its arithmetic ran on
        made = json.loads((Path(r["run"]) / "manifest.json").read_text())["stages"].get("generator")
        assert r["generator_sha256"] == record["generator_sha256"] == (made and made["sha256"])  # None: real images
    assert len({r["images_sha256"] for r in result["cells"]}) == 4
    assert (out / "accuracy.png").stat().st_size > 1000
    pointers = {json.loads(p.read_text())["path"] for p in (out / "runs").rglob("generator.json")}
    assert len(pointers) == 1  # every d3hr cell used the same cached generator
    assert {r["generator_sha256"] for r in result["cells"] if r["method"] == "d3hr"} == {
        generator_sha256(pointers.pop())}  # the weights' own hash, not the recipe's key
    teachers = {Path(r["teacher"]["path"]) for r in result["cells"]}
    assert len(teachers) == 1  # one teacher for every cell, in the cache: nothing written beside the cells
    assert teachers.pop().is_relative_to(Path(os.environ["D3HR_CACHE"]) / "teachers")
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        f"{m}-ipc1-seed{s}" for m in ("d3hr", "random-real") for s in (0, 1))


def test_merge_rows_keeps_earlier_cells_and_replaces_redone_ones():
    from d3hr.compare import merge_rows, summarise

    def row(method, ipc, seed, top1, epochs=300):
        return {"method": method, "ipc": ipc, "seed": seed, "labels": "soft", "recipe": "rded", "sweep": None,
                "student": "convnet", "epochs": epochs, "top1": top1}

    old = [row("d3hr", 10, 0, 0.5), row("d3hr", 10, 1, 0.6), row("d3hr", 50, 0, 0.7, epochs=100)]
    new = [row("d3hr", 10, 1, 0.8), row("base-rs", 10, 0, 0.4)]
    merged = merge_rows(old, new)
    assert [(r["method"], r["ipc"], r["seed"], r["top1"]) for r in merged] == [
        ("d3hr", 10, 0, 0.5), ("d3hr", 50, 0, 0.7), ("d3hr", 10, 1, 0.8), ("base-rs", 10, 0, 0.4)]
    table = {(r["method"], r["ipc"], r["epochs"]): r for r in summarise(merged)}
    assert table[("d3hr", 10, 300)]["n"] == 2 and abs(table[("d3hr", 10, 300)]["mean"] - 65.0) < 1e-9
    assert table[("d3hr", 50, 100)]["n"] == 1


def test_rows_that_another_compare_wrote_meanwhile_are_kept(tmp_path, monkeypatch):
    """Two parts of a grid run at once into one OUT: each merges with the table as it is when it writes."""
    from d3hr import compare as cmp

    out = tmp_path / "grid"
    real = cmp._row

    def meanwhile(*a, **k):
        row = real(*a, **k)
        cmp.write_results(out, "digits", "convnet", None, [{**row, "seed": 7}], [], [])  # the other part finished
        return row

    monkeypatch.setattr(cmp, "_row", meanwhile)
    assert main(["compare", "--dataset", "digits", "--methods", "random-real", "--ipc", "1", "--seeds", "0-0",
                 "--labels", "hard", "--epochs", "1", "--out", str(out)]) == 0
    table = json.loads((out / "results.json").read_text())
    assert sorted(r["seed"] for r in table["cells"]) == [0, 7]


def test_cells_on_different_teachers_or_generators_are_flagged_by_ipc():
    from d3hr.compare import models_line

    def row(seed, teacher, generator=None, ipc=10, recipe="rded"):
        return {"method": "d3hr", "ipc": ipc, "seed": seed, "recipe": recipe, "teacher_sha256": teacher,
                "generator_sha256": generator}

    one = [row(0, "a" * 64, "g" * 64), row(1, "a" * 64, "g" * 64), row(2, None, "g" * 64, recipe="dc")]
    assert models_line(one) == ""  # one teacher, one generator; hard-label rows name no teacher
    line = models_line([*one, row(3, "b" * 64, "g" * 64)])
    assert "IPC 10 cells name 2 different soft-label teachers" in line
    assert f"{'a' * 12}: 2 cells; {'b' * 12}: 1 cell)" in line
    assert "generator" not in line
    line = models_line([*one, row(0, "b" * 64, "h" * 64, ipc=50)])  # a column made with rebuilt caches
    assert "The cells name 2 different soft-label teachers" in line and "name 2 different generators" in line
    assert f"The IPC 50 cells name the generator {'h' * 12}: 1 cell." in line and "left out" not in line
    line = models_line([*one, row(4, "a" * 64, None)])  # a D3HR cell of a version that did not record its generator
    assert f"IPC 10 cells name 2 different generators (weights sha256 {'g' * 12}: 3 cells; unrecorded: 1 cell)" in line
    assert models_line([row(s, "a" * 64, None) for s in range(3)]) == ""  # an older grid: one unrecorded generator
    herd = {"method": "herding", "ipc": 10, "seed": 0, "recipe": "dc", "teacher_sha256": None}
    line = models_line([herd, {**herd, "seed": 1, "selection_teacher_sha256": "t" * 64}])  # herded on a new teacher
    assert f"IPC 10 cells name 2 different selecting teachers (weights sha256 unrecorded: 1 cell; {'t' * 12}" in line


def test_a_table_with_the_full_data_row_reads_back(tmp_path):
    """The full-data row has no IPC: a results.json holding it is read back by the next compare into OUT (it was
    refused once, stopping every later part of a grid) and by refresh_results."""
    from d3hr.compare import _earlier_rows, refresh_results

    setup = {"name": "dc", "labels": "hard", "epochs": 1000}
    cell = {"method": "random-real", "ipc": 10, "seed": 0, "labels": "hard", "recipe": "dc", "setup": setup,
            "sweep": None, "student": "convnet", "epochs": 1000, "top1": 0.74, "teacher": None}
    full = {**cell, "method": "full", "ipc": None, "recipe": "dc-full", "setup": {**setup, "name": "dc-full"},
            "epochs": 30, "top1": 0.93}
    (tmp_path / "results.json").write_text(json.dumps({"dataset": "fashion-mnist", "student": "convnet",
                                                       "cells": [cell, full]}))
    rows, kept = _earlier_rows(tmp_path, "fashion-mnist", "convnet")
    assert [r["ipc"] for r in rows] == [10, None] and kept == []
    result = refresh_results(tmp_path)
    assert [r["ipc"] for r in result["cells"]] == [10, None]
    assert "93.0" in (tmp_path / "results.md").read_text()  # the upper bound's line
    assert _earlier_rows(tmp_path, "fashion-mnist", "convnet")[0] == rows  # and again, as written


def test_paired_differences_leave_out_pairs_on_different_weights():
    from d3hr.compare import paired_differences, paired_table, robust_scores

    def row(method, seed, top1, teacher="a" * 64, generator=None):
        return {"method": method, "ipc": 10, "seed": seed, "recipe": "rded", "labels": "soft", "sweep": None,
                "epochs": 300, "top1": top1, "teacher_sha256": teacher, "generator_sha256": generator}

    rows = [row("d3hr", s, 0.70 + 0.01 * s, generator="g" * 64) for s in range(4)]
    rows += [row("base-rs", s, 0.69 + 0.01 * s, generator="g" * 64) for s in range(3)]
    rows += [row("base-rs", 3, 0.10, generator="h" * 64)]  # seed 3's set came from another generator
    rows += [row("random-real", s, 0.72 + 0.01 * s) for s in range(3)]
    rows += [row("random-real", 3, 0.10, teacher="b" * 64)]  # and its soft labels from another teacher
    paired = {(p["a"], p["b"]): p for p in paired_differences(rows)}
    rs = paired[("d3hr", "base-rs")]
    assert rs["seeds"] == [0, 1, 2] and rs["left_out"] == [3] and abs(rs["mean"] - 1.0) < 1e-9 and rs["n"] == 3
    real = paired[("d3hr", "random-real")]  # random real names no generator: only the teacher decides
    assert real["seeds"] == [0, 1, 2] and real["left_out"] == [3] and abs(real["mean"] + 2.0) < 1e-9
    assert "| 3 (seed 3 left out: other weights) |" in paired_table([rs])
    assert [s["seeds"] for s in robust_scores(rows) if s["method"] == "d3hr"] == [[0, 1, 2]]
    old = [{**r, "generator_sha256": None} for r in rows if r["method"] != "d3hr"]  # base-rs of an older version
    paired = {(p["a"], p["b"]): p for p in paired_differences([*old, *(r for r in rows if r["method"] == "d3hr")])}
    assert ("d3hr", "base-rs") not in paired  # every seed left out: unrecorded is not known to be the same
    assert paired[("d3hr", "random-real")]["seeds"] == [0, 1, 2]  # real images need no generator
    herd = [{**row("herding", s, 0.8), "recipe": "dc", "teacher_sha256": None} for s in range(3)]
    dh = [{**row("d3hr-herd", s, 0.75, None, "g" * 64), "recipe": "dc", "selection_teacher_sha256": "t" * 64}
          for s in range(3)]
    assert not [p for p in paired_differences([*herd, *dh]) if p["b"] == "herding"]  # herded on other teachers
    herd = [{**r, "selection_teacher_sha256": "t" * 64} for r in herd]
    assert [p["n"] for p in paired_differences([*herd, *dh]) if p["b"] == "herding"] == [3]


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
        return {"method": method, "ipc": ipc, "labels": labels, "recipe": {"soft": "rded", "hard": "dc"}[labels],
                "sweep": sweep, "epochs": 2, "n": 3, "mean": mean, "std": 1.0}

    soft = [row("d3hr", "soft", i, 60 + i) for i in (1, 10, 50)] + [row("d3hr", "soft", 10, 70, ["select.pools", 1])]
    hard = [row("d3hr", "hard", i, 50 + i) for i in (1, 10, 50)]
    plot_accuracy(soft, tmp_path / "one.png")
    plot_accuracy(soft + hard, tmp_path / "two.png")
    one, two = Image.open(tmp_path / "one.png").size, Image.open(tmp_path / "two.png").size
    assert two[0] > one[0] + 300 and abs(two[1] - one[1]) < 40  # a second panel beside the first, same height


def _rows(method, recipe, tops, ipc=10):
    labels = "soft" if recipe.startswith("rded") else "hard"
    return [{"method": method, "ipc": ipc, "seed": s, "labels": labels, "recipe": recipe, "sweep": None,
             "student": "convnet", "epochs": 5, "top1": t} for s, t in enumerate(tops)]


def test_paired_differences_and_dd_ranking_scores_from_the_cells():
    from d3hr.compare import markdown_table, paired_differences, paired_table, robust_scores, scores_table, summarise
    from d3hr.evaluation.metrics import ars, lrs

    rows = (_rows("d3hr", "rded", [0.82, 0.83, 0.84]) + _rows("base-rs", "rded", [0.81, 0.81, 0.81])
            + _rows("random-real", "rded", [0.80, 0.80, 0.80]) + _rows("d3hr", "dc", [0.70, 0.70, 0.70])
            + _rows("d3hr", "rded-noaug", [0.60, 0.60, 0.60]) + _rows("random-real", "rded-noaug", [0.65] * 3)
            + [{**r, "ipc": None} for r in _rows("full", "dc-full", [0.93, 0.93])])
    pairs = {(p["a"], p["b"], p["recipe"]): p for p in paired_differences(rows)}
    assert set(pairs) == {("d3hr", "base-rs", "rded"), ("d3hr", "random-real", "rded"),
                          ("d3hr", "random-real", "rded-noaug")}
    assert pairs[("d3hr", "random-real", "rded")]["mean"] == pytest.approx(3.0)
    p = pairs[("d3hr", "base-rs", "rded")]  # (1, 2, 3) points -> 2 -+ 2.484138
    assert (p["a"], p["b"], p["ipc"], p["recipe"], p["n"]) == ("d3hr", "base-rs", 10, "rded", 3)
    assert p["mean"] == pytest.approx(2.0) and p["low"] == pytest.approx(-0.484138, abs=1e-5)
    assert p["significant"] is False and "| d3hr − base-rs | rded | 10 | 5 | +2.00 [-0.48, +4.48] | 3 |" in \
        paired_table([p])
    scores = {(e["method"], e["recipe"]): e for e in robust_scores(rows)}
    d3hr = scores[("d3hr", "rded")]
    assert d3hr["ior"]["mean"] == pytest.approx(0.03) and d3hr["hlr"]["mean"] == pytest.approx(0.23)
    expected = [lrs(0.93, 0.70, t, 0.80) for t in (0.82, 0.83, 0.84)]
    assert d3hr["lrs"]["mean"] == pytest.approx(sum(expected) / 3)
    expected = [ars(t, 0.80, 0.60, 0.65) for t in (0.82, 0.83, 0.84)]
    assert d3hr["ars"]["mean"] == pytest.approx(sum(expected) / 3)
    assert "lrs" not in scores[("base-rs", "rded")]  # no hard-label cells for base-rs
    assert ("d3hr", "rded-noaug") not in scores
    table = summarise(rows)
    text = markdown_table(table, "digits", "convnet")
    assert "soft (rded) IPC 10 (5 ep)" in text and "hard (dc) IPC 10 (5 ep)" in text and "| full |" not in text
    assert "| d3hr | rded | 10 | 5 | 23.0 ± 0.0 | 3.0 ± 1.0 |" in scores_table(robust_scores(rows))


def test_swept_rows_are_paired_with_their_method_default_and_random_real():
    """A sweep value (e.g. a covariance form) is compared seed by seed with the same method's unswept cells and with
    random real; seeds missing on one side are left out of that pair."""
    from d3hr.compare import paired_differences, paired_table

    sweep = ["stats.covariance", "full"]
    rows = (_rows("d3hr", "dc", [0.70, 0.71, 0.72]) + _rows("random-real", "dc", [0.74, 0.74, 0.74, 0.74])
            + [{**r, "sweep": sweep} for r in _rows("d3hr", "dc", [0.71, 0.73, 0.75, 0.90])])
    pairs = {(p["a"], p["b"], str(p["sweep"]), str(p["sweep_b"])): p for p in paired_differences(rows)}
    assert set(pairs) == {("d3hr", "random-real", "None", "None"), ("d3hr", "d3hr", str(sweep), "None"),
                          ("d3hr", "random-real", str(sweep), "None")}
    full = pairs[("d3hr", "d3hr", str(sweep), "None")]  # differences 1, 2, 3 points over the 3 common seeds
    assert full["seeds"] == [0, 1, 2] and full["mean"] == pytest.approx(2.0)
    assert full["low"] == pytest.approx(-0.484138, abs=1e-5) and not full["significant"]
    vs_real = pairs[("d3hr", "random-real", str(sweep), "None")]  # -3, -1, +1, +16 over all 4 seeds
    assert vs_real["n"] == 4 and vs_real["mean"] == pytest.approx(3.25)
    text = paired_table([full])
    assert "| d3hr (stats.covariance=full) − d3hr | dc | 10 | 5 | +2.00 [-0.48, +4.48] | 3 |" in text
    # a swept d3hr-herd also meets its partners without the sweep: the paper's D3HR and herding
    rows += _rows("herding", "dc", [0.80, 0.80, 0.80]) + [{**r, "sweep": sweep} for r in _rows("d3hr-herd", "dc",
                                                                                                [0.75, 0.76, 0.77])]
    pairs = {(p["a"], p["b"], str(p["sweep"]), str(p["sweep_b"])): p for p in paired_differences(rows)}
    assert {k for k in pairs if k[0] == "d3hr-herd"} == {
        ("d3hr-herd", b, str(sweep), s) for b, s in (("d3hr", str(sweep)), ("d3hr", "None"), ("random-real", "None"),
                                                       ("herding", "None"))}
    assert pairs[("d3hr-herd", "d3hr", str(sweep), "None")]["mean"] == pytest.approx(5.0)  # 75-70, 76-71, 77-72


def test_set_metrics_are_opt_in_tabled_per_method_and_ipc_and_kept_across_compares(tmp_path, monkeypatch):
    """compare(set_metrics=True) computes d3hr metrics once per cell and tables the overall readouts over seeds;
    without it nothing is computed (distillation, evaluation and metrics replaced by stand-ins)."""
    from d3hr import api
    from d3hr.compare import compare, refresh_results
    from d3hr.config import load_config

    def evaluate(run, seeds, recipe, **kwargs):
        rec = {"labels": "soft", "recipe": recipe, "setup": {}, "epochs": 2, "top1": 0.5, "teacher_sha256": None}
        return {"records": [rec], "teacher": None}

    calls = []

    def metrics(run, teacher_epochs=None, device="cpu"):
        calls.append(Path(run).name)
        s = int(Path(run).name[-1])  # the cell's seed
        overall = {"n_real": 100, "n_fake": 10, "fid": 10.0 + s, "precision": 0.9, "recall": None, "density": 1.0,
                   "coverage": 0.5 + 0.1 * s, "diversity": 2.0, "real_diversity": 3.0}
        return {"features": {"sha256": "0" * 64}, "k": 5, "overall": overall}

    monkeypatch.setattr(api, "distill", lambda cfg: {})
    monkeypatch.setattr(importlib.import_module("d3hr.evaluation.runner"), "evaluate", evaluate)
    monkeypatch.setattr(importlib.import_module("d3hr.evaluation.set_quality"), "metrics", metrics)
    out = tmp_path / "grid"
    args = (load_config(None, []), ["d3hr", "random-real"], [1], 2, out)
    result = compare(*args, epochs=2)
    assert calls == [] and "set_metrics" not in result and "Set quality" not in (out / "results.md").read_text()
    result = compare(*args, epochs=2, set_metrics=True)
    assert sorted(calls) == sorted(f"{m}-ipc1-seed{s}" for m in ("d3hr", "random-real") for s in (0, 1))
    (d3hr_row, _) = result["set_metrics"]["summary"]
    assert d3hr_row["method"] == "d3hr" and d3hr_row["n"] == 2 and d3hr_row["recall"] is None
    assert d3hr_row["fid"]["mean"] == pytest.approx(10.5) and d3hr_row["coverage"]["mean"] == pytest.approx(0.55)
    row = "| d3hr | 1 | 10.5 ± 0.71 | 0.900 ± 0.000 |  | 1.000 ± 0.000 | 0.550 ± 0.071 | 2 ± 0 | 3 ± 0 | 2 |"
    assert row in (out / "results.md").read_text()
    calls.clear()
    again = compare(*args, epochs=2)  # a later compare into the same OUT keeps the earlier set-quality cells
    assert calls == [] and again["set_metrics"] == result["set_metrics"] and row in (out / "results.md").read_text()
    (out / "results.md").unlink()
    refreshed = refresh_results(out)  # the tables again from results.json alone
    assert refreshed == json.loads((out / "results.json").read_text())
    assert refreshed["set_metrics"] == result["set_metrics"] and refreshed["summary"] == again["summary"]
    assert row in (out / "results.md").read_text()
    # the tracking table is wired in: 4 cells a recipe (2 methods x 2 seeds), all top-1 equal, so no rho
    assert [(e["scope"], e["recipe"], e["cells"], e["fid"]) for e in refreshed["set_metrics"]["accuracy"]] == [
        ("all", "rded", 4, None)]
    assert "| all | rded | 1 | 2 |  |" in (out / "results.md").read_text()


def test_a_grid_in_parts_runs_only_the_seeds_named_and_keeps_the_earlier_rows(tmp_path, monkeypatch):
    """compare(seeds=[...]) runs those seeds only; a later part into the same OUT (its results.json carried to another
    machine, the run folders not) adds its rows to the earlier ones, and the statistics cover all of them."""
    from d3hr import api
    from d3hr.compare import compare
    from d3hr.config import load_config

    ran = []

    def evaluate(run, seeds, recipe, **kwargs):
        ran.append(Path(run).name)
        rec = {"labels": "hard", "recipe": recipe, "setup": {}, "epochs": 2, "top1": 0.5 + 0.01 * seeds[0],
               "teacher_sha256": None}
        return {"records": [rec], "teacher": None}

    monkeypatch.setattr(api, "distill", lambda cfg: {})
    monkeypatch.setattr(importlib.import_module("d3hr.evaluation.runner"), "evaluate", evaluate)
    out = tmp_path / "grid"
    compare(load_config(None, []), ["d3hr", "base-rs"], [10], 2, out, labels=["hard"], epochs=2)
    assert sorted(ran) == sorted(f"{m}-ipc10-seed{s}" for m in ("d3hr", "base-rs") for s in (0, 1))
    ran.clear()
    result = compare(load_config(None, []), ["d3hr", "base-rs"], [10], [2, 4], out, labels=["hard"], epochs=2)
    assert sorted(ran) == sorted(f"{m}-ipc10-seed{s}" for m in ("d3hr", "base-rs") for s in (2, 4))
    assert result["seeds"] == [0, 1, 2, 4]
    (row,) = [r for r in result["summary"] if r["method"] == "d3hr"]
    assert row["n"] == 4 and row["mean"] == pytest.approx(100 * (0.5 + 0.01 * 7 / 4))
    (pair,) = result["paired"]
    assert pair["seeds"] == [0, 1, 2, 4]


@pytest.mark.parametrize("text, seeds", [("5", 5), ("3,4", [3, 4]), ("5-7", [5, 6, 7]), ("0,2-3", [0, 2, 3])])
def test_seeds_flag_reads_a_count_a_list_or_a_range(text, seeds):
    from d3hr.cli import _seeds

    assert _seeds(text, "--seeds") == seeds


@pytest.mark.parametrize("text, message", [("x", "--seeds must be a count"), ("0", "--seeds must be an integer >= 1"),
                                           ("3,3", "--seeds names a seed twice"), ("4-2", "--seeds must list seeds")])
def test_bad_seeds_are_one_line_errors(tmp_path, capsys, text, message):
    assert main(["compare", "--dataset", "digits", "--methods", "random-real", "--ipc", "1", "--seeds", text,
                 "--out", str(tmp_path / "grid")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "grid").exists()


def test_another_students_rows_are_kept_and_another_dataset_is_refused(tmp_path, monkeypatch, capsys):
    """A compare with another student into the same OUT keeps the first student's rows in results.json (its
    statistics cover its own student only); an OUT of another dataset is refused before any work."""
    from d3hr import api
    from d3hr.compare import compare
    from d3hr.config import load_config

    def evaluate(run, seeds, recipe, student, **kwargs):
        rec = {"labels": "hard", "recipe": recipe, "setup": {}, "epochs": 2, "top1": 0.4 if student == "convnet" else
               0.6, "teacher_sha256": None}
        return {"records": [rec], "teacher": None}

    monkeypatch.setattr(api, "distill", lambda cfg: {})
    monkeypatch.setattr(importlib.import_module("d3hr.evaluation.runner"), "evaluate", evaluate)
    out = tmp_path / "grid"
    base = load_config(None, [])
    compare(base, ["random-real"], [1], 2, out, labels=["hard"], epochs=2)
    result = compare(base, ["random-real"], [1], 2, out, labels=["hard"], epochs=2, student="resnet18")
    assert sorted(r["student"] for r in result["cells"]) == ["convnet"] * 2 + ["resnet18"] * 2
    (row,) = result["summary"]
    assert row["n"] == 2 and row["mean"] == pytest.approx(60.0)
    again = compare(base, ["random-real"], [1], 2, out, labels=["hard"], epochs=2)
    assert len(again["cells"]) == 4 and again["summary"][0]["mean"] == pytest.approx(40.0)
    # The same OUT as if another dataset's grid had written it (the stand-ins stay in place: a refusal that failed
    # would run quickly and change the file, not train for hours).
    table = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps({**table, "dataset": "another-set"}))
    before = (out / "results.json").read_bytes()
    args = ["compare", "--dataset", "digits", "--methods", "random-real", "--ipc", "1", "--seeds", "1", "--labels",
            "hard", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a compare of dataset 'another-set'" in err and len(err.strip().splitlines()) == 1
    assert (out / "results.json").read_bytes() == before


def test_set_quality_is_checked_against_accuracy_cell_by_cell():
    """quality_vs_accuracy pairs each cell's readouts with its top-1 (same method, seed and sweep value), per
    recipe: a readout that orders the cells as accuracy does gets rho = +1 (FID the other way: -1), one that does
    not, a smaller rho; constant or missing readouts none; the full-data row, quality without accuracy and recipes
    with fewer than 4 cells are left out."""
    from d3hr.compare import generated_methods, quality_vs_accuracy, tracking_table

    top1 = {("d3hr", 0): 0.70, ("d3hr", 1): 0.72, ("random-real", 0): 0.75, ("random-real", 1): 0.74,
            ("herding", 0): 0.80, ("herding", 1): 0.79}
    rows = [{"method": m, "ipc": 10, "seed": s, "sweep": None, "recipe": rcp, "epochs": 9, "top1": t}
            for (m, s), t in top1.items() for rcp in ("dc", "rded")]
    rows.append({"method": "full", "ipc": None, "seed": 0, "sweep": None, "recipe": "full", "epochs": 9, "top1": 0.9})
    rows += [{**r, "recipe": "dc-plain"} for r in rows[:3]]  # three cells: too few for a correlation
    quality = [{"method": m, "ipc": 10, "seed": s, "sweep": None, "fid": 1.0 - t, "coverage": t, "precision": 0.5,
                "recall": None, "density": [3, 1, 2, 6, 4, 5][i], "diversity": 2.0}
               for i, ((m, s), t) in enumerate(top1.items())]
    quality.append({**quality[0], "seed": 7, "coverage": 0.0})  # no accuracy for seed 7: left out
    tracking = quality_vs_accuracy(rows, quality)
    assert [(e["recipe"], e["cells"], e["methods"]) for e in tracking] == [
        ("dc", 6, ["d3hr", "herding", "random-real"]), ("rded", 6, ["d3hr", "herding", "random-real"])]
    dc = tracking[0]
    assert dc["coverage"]["rho"] == pytest.approx(1.0) and dc["coverage"]["significant"]
    assert dc["fid"]["rho"] == pytest.approx(-1.0)
    # density ranks (3, 1, 2, 6, 4, 5) against accuracy ranks (1, 2, 4, 3, 6, 5): sum d^2 = 22, rho = 1 - 132 / 210
    assert dc["density"]["rho"] == pytest.approx(1 - 132 / 210) and not dc["density"]["significant"]
    assert dc["precision"] is None and dc["recall"] is None and dc["diversity"] is None
    text = tracking_table(tracking)
    assert "| all | dc | 10 | 9 | -1.00 [-1.00, -1.00] * |  |  | +0.37 [" in text and text.count("| rded |") == 1
    # the generated methods alone (herding and random real select real images): two d3hr cells a recipe, too few
    assert generated_methods(rows) == {"d3hr"}
    assert quality_vs_accuracy(rows, quality, generated_methods(rows), "generated") == []
    some = quality_vs_accuracy(rows, quality, {"d3hr", "herding"}, "two")
    assert [(e["scope"], e["cells"]) for e in some] == [("two", 4), ("two", 4)]
