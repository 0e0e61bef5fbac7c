"""evaluate() on a tiny digits run: records, skipping finished ones, one shared teacher, hard labels, bad input."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import pytest

from d3hr.errors import D3HRError
from d3hr.evaluation import evaluate
from d3hr.evaluation.recipes import get_recipe
from d3hr.evaluation.teacher import load_teacher, weights_sha256
from d3hr.utils.folders import write_marker
from d3hr.utils.io import read_json, write_json

from .conftest import IPC, TEACHER_EPOCHS, make_run, write_manifest

FAST = {"epochs": 3, "teacher_epochs": TEACHER_EPOCHS}


def _teacher_file() -> Path:
    (found,) = (Path(os.environ["D3HR_CACHE"]) / "teachers").glob(f"*/convnet-*-{TEACHER_EPOCHS}ep.safetensors")
    return found


def test_soft_labels_write_records_skip_reruns_and_share_the_teacher(run_dir: Path, monkeypatch) -> None:
    out = evaluate(run_dir, seeds=2, best_of_last=2, **FAST)
    assert (out["trained"], out["skipped"]) == (2, 0)
    results = read_json(run_dir / "eval" / "results.json")
    assert len(results["records"]) == 2 and [r["seed"] for r in results["records"]] == [0, 1]
    for rec in results["records"]:
        assert (rec["student"], rec["labels"], rec["teacher"], rec["epochs"]) == ("convnet", "soft", "convnet", 3)
        assert 0.0 <= rec["top1"] <= 1.0 and rec["test_images"] == 360 and rec["train_images"] == 10 * IPC
        assert rec["top1"] <= rec["top1_best_of_last_2_epochs"]
        assert rec["setup"]["temperature"] == 20.0 and rec["setup"]["flip"] is False  # digits: no flips
        assert rec["recipe"] == "rded" and rec["setup"] == get_recipe("rded", epochs=3).resolve(False).settings()
    (summary,) = results["summary"]
    assert summary["n"] == 2 and summary["seeds"] == [0, 1]
    assert summary["top1_mean"] == pytest.approx(sum(r["top1"] for r in results["records"]) / 2)
    teacher = results["teachers"]["convnet"]
    assert teacher["epochs"] == TEACHER_EPOCHS and 0.5 < teacher["test_top1"] <= 1.0
    assert teacher["train_images"] == 1437  # the full training split
    assert teacher["recipe"] == "teacher" and teacher["setup"]["optimizer"] == "adamw"
    assert {r["teacher_sha256"] for r in results["records"]} == {teacher["sha256"]}
    assert teacher["sha256"] == weights_sha256(load_teacher(_teacher_file())[0])
    assert read_json(_teacher_file().with_suffix(".json"))["test_top1"] == teacher["test_top1"]

    # Rerun: nothing is retrained; a new seed trains one student against the cached teacher.
    mtime = _teacher_file().stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher was retrained")

    # d3hr.evaluate is also the public function, so patch the module object, not a dotted path.
    monkeypatch.setattr(importlib.import_module("d3hr.evaluation.teacher"), "_train_teacher", no_training)
    again = evaluate(run_dir, seeds=2, best_of_last=2, **FAST)
    assert (again["trained"], again["skipped"]) == (0, 2) and again["records"] == out["records"]
    more = evaluate(run_dir, seeds=[0, 1, 2], best_of_last=2, **FAST)
    assert (more["trained"], more["skipped"]) == (1, 2) and more["summary"]["n"] == 3
    assert _teacher_file().stat().st_mtime_ns == mtime
    results = read_json(run_dir / "eval" / "results.json")
    assert len(results["records"]) == 3 and results["summary"][0]["n"] == 3

    # A sibling run (another method on the same dataset) is scored against the same teacher.
    sibling = evaluate(make_run(run_dir.parent / "sibling", ipc=2), seeds=1, **FAST)
    assert sibling["teacher"]["path"] == str(_teacher_file())
    # Another teacher (other epochs, other weights) is a new record, not a cached one.
    monkeypatch.undo()
    other = evaluate(run_dir, seeds=[0], epochs=3, teacher_epochs=TEACHER_EPOCHS + 1)
    assert other["trained"] == 1 and other["records"][0]["teacher_sha256"] != teacher["sha256"]


def test_hard_labels_need_no_teacher(run_dir: Path) -> None:
    out = evaluate(run_dir, labels="hard", seeds=1, epochs=2)
    (rec,) = out["records"]
    assert rec["labels"] == "hard" and rec["teacher"] is None and rec["setup"]["temperature"] is None
    assert rec["recipe"] == "dc" and rec["setup"]["dsa_strategy"] == "color_crop_cutout_scale_rotate"  # no flip
    assert rec["setup"]["optimizer"] == "sgd" and rec["epochs"] == 2 and len(rec["setup"]["input_std"]) == 1
    assert out["teacher"] is None and not (Path(os.environ["D3HR_CACHE"]) / "teachers").exists()
    assert read_json(run_dir / "eval" / "results.json")["summary"][0]["labels"] == "hard"


def test_full_training_set_and_no_augmentation(run_dir: Path) -> None:
    full = evaluate(run_dir, full=True, seeds=1, epochs=1)
    (rec,) = full["records"]
    assert (rec["recipe"], rec["labels"], rec["train_images"]) == ("dc-full", "hard", 1437)
    noaug = evaluate(run_dir, labels="hard", seeds=1, epochs=1, augment=False)
    assert noaug["records"][0]["recipe"] == "dc-noaug" and noaug["records"][0]["setup"]["augment"] == "none"
    with pytest.raises(D3HRError, match="do not match the recipe"):
        evaluate(run_dir, labels="soft", recipe="dc", seeds=1, epochs=1)


def test_changed_images_are_new_records(run_dir: Path) -> None:
    evaluate(run_dir, labels="hard", seeds=1, epochs=1)
    shutil.copy(run_dir / "images" / "0_0" / "00000.png", run_dir / "images" / "0_0" / "00099.png")
    write_manifest(run_dir)  # a new image set, as a re-distillation writes it
    out = evaluate(run_dir, labels="hard", seeds=1, epochs=1)
    assert out["trained"] == 1 and out["records"][0]["train_images"] == 10 * IPC + 1
    assert len(read_json(run_dir / "eval" / "results.json")["summary"]) == 2


def test_only_the_manifest_images_are_trained_on(run_dir: Path) -> None:
    """A file added under RUN/images is left out; a listed image that changed or is missing is refused."""
    first = evaluate(run_dir, labels="hard", seeds=1, epochs=1)
    shutil.copy(run_dir / "images" / "0_0" / "00000.png", run_dir / "images" / "0_0" / "00099.jpg")
    again = evaluate(run_dir, labels="hard", seeds=1, epochs=1)
    assert again["skipped"] == 1 and again["records"] == first["records"]  # the same image set: nothing retrained
    assert again["records"][0]["train_images"] == 10 * IPC
    target = run_dir / "images" / "3_3" / "00001.png"
    target.write_bytes((run_dir / "images" / "3_3" / "00002.png").read_bytes())
    with pytest.raises(D3HRError, match="00001.png differs from its sha256 in .*manifest.json"):
        evaluate(run_dir, labels="hard", seeds=[5], epochs=1)
    target.unlink()
    with pytest.raises(D3HRError, match="00001.png is listed in .*manifest.json but missing"):
        evaluate(run_dir, labels="hard", seeds=[5], epochs=1)


def test_bad_runs_are_one_line_errors(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(D3HRError, match="not a run folder"):
        evaluate(tmp_path / "nowhere", labels="hard", seeds=1, epochs=1)
    with pytest.raises(D3HRError, match="labels must be soft or hard"):
        evaluate(run_dir, labels="fuzzy")
    with pytest.raises(D3HRError, match="unknown student"):
        evaluate(run_dir, student="convnett", labels="hard")
    shutil.rmtree(run_dir / "images" / "9_9")
    with pytest.raises(D3HRError, match="9_9/00000.png is listed in .* but missing"):
        evaluate(run_dir, labels="hard", seeds=1, epochs=1)
    shutil.rmtree(run_dir / "images")
    with pytest.raises(D3HRError, match="does not exist: distill the run first"):
        evaluate(run_dir, labels="hard", seeds=1, epochs=1)


def test_soft_labels_learn(run_dir: Path) -> None:
    """A sanity floor, not a benchmark: 5 real digits per class, a 20-epoch teacher, 50 student epochs (chance is
    10%)."""
    out = evaluate(run_dir, seeds=1, epochs=50, batch_size=16, teacher_epochs=20)
    assert out["teacher"]["test_top1"] > 0.85
    assert out["records"][0]["top1"] > 0.5


def test_manifest_must_match_the_folders(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    write_json(run_dir / "manifest.json", {**manifest, "class_folders": [*manifest["class_folders"][:9], "9_nine"]})
    with pytest.raises(D3HRError, match="lists no images in the class folder .*9_nine"):
        evaluate(run_dir, labels="hard", seeds=1, epochs=1)
    write_json(run_dir / "manifest.json", {**manifest, "classes": {str(c): f"digit {c}" for c in range(10)}})
    with pytest.raises(D3HRError, match="lists other classes than dataset 'digits'"):
        evaluate(run_dir, labels="hard", seeds=1, epochs=1)
    write_json(run_dir / "manifest.json", {**manifest, "classes": list(manifest["classes"].values())})
    with pytest.raises(D3HRError, match=r"manifest.json: \['classes'\] must be an object, got a list"):
        evaluate(run_dir, labels="hard", seeds=1, epochs=1)
    (run_dir / "manifest.json").unlink()
    with pytest.raises(D3HRError, match="is not a run folder"):  # nothing says d3hr wrote it
        evaluate(run_dir, labels="hard", seeds=1, epochs=1)
    write_marker(run_dir, "run")  # a run d3hr started but did not finish
    with pytest.raises(D3HRError, match="has no manifest.json: distill the run first"):
        evaluate(run_dir, labels="hard", seeds=1, epochs=1)
