"""Issue 12, second round: folders d3hr does not own are left alone, integrity checks cover what evaluation reads,
bad input is one line (exit 2) before any work, Ctrl-C is exit 130, and a real bug keeps its traceback."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from d3hr.cli import main
from d3hr.utils.folders import MARKER
from tests.conftest import FAST_TRAIN

SETS = [a for s in FAST_TRAIN for a in ("--set", s)]
RANDOM_REAL = ["--dataset", "digits", "--method", "random-real", "--ipc", "2", *SETS]  # no generator: fast
NO_SUCH_GPU = "cuda:999" if torch.cuda.is_available() else "cuda"


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: relative path -> sha256 of a file's bytes, or 'dir'."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("d3hr: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A folder of the user's: an images/ subfolder of their own, a config.yaml that is not d3hr's, notes."""
    folder = tmp_path / "mine"
    (folder / "images" / "0_0").mkdir(parents=True)
    (folder / "images" / "0_0" / "00000.png").write_bytes(b"my own picture")
    (folder / "images" / "holiday.jpg").write_bytes(b"\xff\xd8 not d3hr's")
    (folder / "config.yaml").write_text("this: [is, not, a d3hr config\n")
    (folder / "notes.txt").write_text("keep me\n")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("refusals") / "run"
    assert main(["distill", *RANDOM_REAL, "--out", str(run)]) == 0
    return run


# ----- item 2: folders d3hr did not create --------------------------------------------------------------------
@pytest.mark.parametrize("command", ["distill", "invert", "compare", "finetune", "evaluate"])
def test_a_folder_of_the_users_is_refused_and_left_byte_identical(command, user_folder, capsys):
    before = _snapshot(user_folder)
    args = {"distill": ["distill", *RANDOM_REAL, "--out", str(user_folder)],
            "invert": ["invert", "--dataset", "digits", *SETS, "--out", str(user_folder)],
            "compare": ["compare", "--dataset", "digits", "--methods", "random-real", "--ipc", "1", "--seeds", "1",
                        "--epochs", "1", "--out", str(user_folder), *SETS],
            "finetune": ["finetune", "--generator", str(user_folder / "nowhere"), "--dataset", "digits",
                         "--out", str(user_folder)],
            "evaluate": ["evaluate", str(user_folder), "--labels", "hard", "--seeds", "1", "--epochs", "1"]}[command]
    assert main(args) == 2
    expected = "is not a run folder" if command == "evaluate" else "was not written by d3hr"
    _one_line_error(capsys, str(user_folder), expected)
    assert _snapshot(user_folder) == before


def test_the_manifest_lists_only_what_d3hr_wrote(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "notes.txt").write_text("mine\n")
    (copy / "images" / "0_0" / "99999.png").write_bytes((copy / "images" / "0_0" / "00000.png").read_bytes())
    (copy / "images" / "0_0" / "extra.jpg").write_bytes((copy / "images" / "0_0" / "00001.png").read_bytes())
    assert main(["distill", *RANDOM_REAL, "--out", str(copy)]) == 0  # every stage skipped, manifest rewritten
    files = json.loads((copy / "manifest.json").read_text())["files"]
    assert sorted(k for k in files if k.startswith("images/")) == [
        f"images/{c}_{c}/{i:05d}.png" for c in range(10) for i in range(2)]
    assert set(files) - {k for k in files if k.startswith("images/")} == {"config.yaml", "selection.safetensors",
                                                                         "stages.json"}
    capsys.readouterr()
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    for rel in ("notes.txt", "images/0_0/99999.png", "images/0_0/extra.jpg"):
        assert f"{rel}: not in the manifest" in out
    assert out.count("not in the manifest") == 3  # the marker, .lock and config of d3hr's own are not reported


def test_evaluate_trains_on_exactly_the_manifest_images(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "images" / "0_0" / "00002.jpg").write_bytes((copy / "images" / "0_0" / "00000.png").read_bytes())
    assert main(["verify", str(copy)]) == 1
    assert "images/0_0/00002.jpg: not in the manifest" in capsys.readouterr().out
    assert main(["evaluate", str(copy), "--labels", "hard", "--seeds", "1", "--epochs", "1"]) == 0
    (rec,) = json.loads((copy / "eval" / "results.json").read_text())["records"]
    assert rec["train_images"] == 20  # not 21
    assert main(["verify", str(copy)]) == 1  # eval/ is d3hr's: still only the .jpg
    assert capsys.readouterr().out.count("not in the manifest") == 1
    (copy / "images" / "4_4" / "00001.png").write_bytes(b"changed")
    assert main(["evaluate", str(copy), "--labels", "hard", "--seeds", "2", "--epochs", "1"]) == 2
    _one_line_error(capsys, "4_4/00001.png differs from its sha256")


def test_runs_written_before_the_marker_still_resume(run, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(run, copy)
    (copy / MARKER).unlink()
    before = _snapshot(copy / "images")
    assert main(["distill", *RANDOM_REAL, "--out", str(copy)]) == 0
    assert (copy / MARKER).is_file() and _snapshot(copy / "images") == before


def test_an_empty_folder_is_taken_and_marked(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["distill", *RANDOM_REAL, "--out", str(tmp_path / "empty")]) == 0
    assert json.loads((tmp_path / "empty" / MARKER).read_text())["kind"] == "run"


def test_a_compare_folder_is_not_a_run_folder(tmp_path, capsys):
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / MARKER).write_text(json.dumps({"format_version": 1, "kind": "compare"}))
    assert main(["distill", *RANDOM_REAL, "--out", str(tmp_path / "grid")]) == 2
    _one_line_error(capsys, "is a d3hr compare folder, not a run folder")


# ----- item 6: one-line errors, exit 2, before any work -----------------------------------------------------------
def test_out_that_cannot_be_a_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["distill", *RANDOM_REAL, "--out", str(tmp_path / "file")]) == 2
    _one_line_error(capsys, f"{tmp_path / 'file'} exists and is not a folder")
    assert main(["distill", *RANDOM_REAL, "--out", str(tmp_path / "file" / "run")]) == 2  # ENOTDIR, even as root
    _one_line_error(capsys, f"cannot write the run folder {tmp_path / 'file' / 'run'}: Not a directory")
    assert main(["distill", *RANDOM_REAL, "--out", "/proc/d3hr-test/run"]) == 2  # /proc takes no new folders
    _one_line_error(capsys, "cannot write the run folder /proc/d3hr-test/run")
    assert (tmp_path / "file").read_text() == "x"


def test_an_unwritable_cache_is_refused_before_work(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("D3HR_CACHE", str(tmp_path / "file" / "cache"))
    train = importlib.import_module("d3hr.generator.train")
    monkeypatch.setattr(train, "train_vae", lambda *a, **k: pytest.fail("trained with an unwritable cache"))
    assert main(["distill", "--dataset", "digits", *SETS, "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, f"cache folder {tmp_path / 'file' / 'cache'} is not writable", "D3HR_CACHE")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["--device", "gpu"], "unknown device 'gpu'"),
    (["--device", NO_SUCH_GPU], f"device '{NO_SUCH_GPU}'"),
    (["--set", "generate.save_size=0"], "generate.save_size must be >= 1"),
    (["--image-size", "-8"], "data.image_size must be >= 1"),
    (["--image-size", "0"], "data.image_size must be >= 1"),
    (["--set", "generator.dit.patch_size=0"], "generator.dit.patch_size must be >= 1"),
    (["--set", "select.teacher_epochs=0"], "select.teacher_epochs must be >= 1 or null, got 0"),
    (["--set", "diffusion.num_steps=2000"], "diffusion.num_steps=2000 exceeds the generator's 1000"),
])
def test_bad_values_are_refused_before_any_work(args, needle, tmp_path, capsys):
    assert main(["distill", "--dataset", "digits", *SETS, *args, "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "run").exists()


def test_num_steps_beyond_a_pretrained_schedule_is_refused_before_inversion(tiny_generator, tmp_path, capsys):
    from d3hr.generator import save_generator

    tiny_generator.vae.register_to_config(scaling_factor=0.5)
    save_generator(tiny_generator, tmp_path / "gen")
    args = ["distill", "--dataset", "digits", "--generator", str(tmp_path / "gen"), "--out", str(tmp_path / "run"),
            *SETS, "--set", "diffusion.num_steps=1001"]
    assert main(args) == 2
    _one_line_error(capsys, "diffusion.num_steps=1001 exceeds the generator's 1000 training timesteps")
    assert not (tmp_path / "run" / "stats.safetensors").exists()


@pytest.mark.parametrize(("text", "needle"), [
    ("[]", "the top level must be an object, got a list"),
    ('{"files": {}, "classes": ["0", "1"]}', "['classes'] must be an object, got a list"),
    ('{"files": {}, "classes": {"zero": "0"}}', "has the key 'zero', which is not a class index"),
    ('{"files": {"images/a\\u0000b.png": "' + "0" * 64 + '"}, "classes": {}}', "'images/a\\x00b.png'"),
    ('{"files": {"../outside": "' + "0" * 64 + '"}, "classes": {}}', "which is not a relative path"),
    ('{"files": {"a": "not a digest"}, "classes": {}}', "must be a sha256 hex digest"),
])
@pytest.mark.parametrize("command", ["verify", "report", "evaluate"])
def test_a_manifest_of_the_wrong_shape_is_one_line(command, text, needle, run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "manifest.json").write_text(text)
    assert main([command, str(copy), *(["--labels", "hard", "--epochs", "1"] if command == "evaluate" else [])]) == 2
    _one_line_error(capsys, f"{copy / 'manifest.json'}: ", needle)


def test_a_tampered_stages_file_is_one_line(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    stages = json.loads((copy / "stages.json").read_text())
    (copy / "stages.json").write_text(json.dumps({**stages, "select": ["key"]}))
    assert main(["distill", *RANDOM_REAL, "--out", str(copy)]) == 2
    _one_line_error(capsys, f"{copy / 'stages.json'}: ['select'] must be an object, got a list")
    assert main(["report", str(copy)]) == 2
    _one_line_error(capsys, "stages.json")


def test_a_truncated_png_in_a_report_is_one_line(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    png = copy / "images" / "2_2" / "00000.png"
    png.write_bytes(png.read_bytes()[:40])
    assert main(["report", str(copy)]) == 2
    _one_line_error(capsys, f"{png} is not a readable image")


def test_ctrl_c_during_evaluate_is_exit_130(run, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("d3hr.evaluation.runner"), "train_model", interrupted)
    assert main(["evaluate", str(copy), "--labels", "hard", "--seeds", "1", "--epochs", "1"]) == 130
    assert capsys.readouterr().err == "d3hr: interrupted; rerun the same command to resume\n"


def test_debug_shows_the_traceback_and_a_bug_keeps_it(tmp_path, monkeypatch, capsys):
    assert main(["verify", str(tmp_path / "nowhere"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("has no manifest.json: not a distilled run folder")
    assert main(["--debug", "verify", str(tmp_path / "nowhere")]) == 2
    assert "Traceback" in capsys.readouterr().err

    def bug(path):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(importlib.import_module("d3hr.utils.manifest"), "verify", bug)
    with pytest.raises(ZeroDivisionError):
        main(["verify", str(tmp_path)])


# ----- item 7: the whole grid and the data are checked before work -------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (["--methods", "d3hr,d3hr"], "--methods names a method twice"),
    (["--methods", "random-real,nope"], "unknown method 'nope'"),
    (["--ipc", "1,x"], "--ipc must be comma-separated integers, got '1,x'"),
    (["--ipc", "0"], "--ipc must be integers >= 1"),
    (["--ipc", "1,1"], "--ipc names a value twice"),
    (["--seeds", "0"], "--seeds must be an integer >= 1, got 0"),
    (["--labels", "soft,fuzzy"], "--labels must be soft, hard or soft,hard"),
    (["--student", "convnett"], "unknown student 'convnett'"),
    (["--sweep", "select.ipcc=1,2"], "unknown config key 'select.ipcc'"),
    (["--sweep", "select.candidates=10,0"], "select.candidates must be >= 1, got 0"),
    (["--set", "invert.tolerance=null", "--sweep", "invert.per_class=20,auto"],
     "invert.per_class=auto needs invert.tolerance"),  # the base is checked cell by cell: this cell cannot run
    (["--device", "gpu"], "unknown device 'gpu'"),
])
def test_compare_checks_the_whole_grid_before_the_first_cell(args, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(importlib.import_module("d3hr.api"), "distill", lambda cfg: pytest.fail("a cell started"))
    base = {"--methods": "random-real,herding", "--ipc": "1", "--seeds": "1", "--labels": "soft"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["compare", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "grid"), *SETS]
    assert main([*argv, *[x for kv in base.items() for x in kv]]) == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "grid").exists()


def test_compare_checks_the_swept_cells_not_the_base_they_complete(tmp_path, monkeypatch):
    """Exact caps need the rule off (invert.tolerance=null), which the default per_class=auto refuses; under a
    sweep of per_class the base never runs as it is, so the grid starts, each cell with its cap."""
    seen = []

    class Started(Exception):
        pass

    def distill(cfg):
        seen.append((cfg.invert.per_class, cfg.invert.tolerance))
        raise Started

    monkeypatch.setattr(importlib.import_module("d3hr.api"), "distill", distill)
    argv = ["compare", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "grid"), *SETS, "--methods",
            "d3hr", "--ipc", "1", "--seeds", "1", "--labels", "hard", "--set", "invert.tolerance=null",
            "--sweep", "invert.per_class=20,all"]
    with pytest.raises(Started):
        main(argv)
    assert seen == [(20, None)]
    assert main(argv[:-2]) == 2  # without the sweep the base itself would run: refused


def test_too_few_images_for_statistics_is_refused_before_training(tmp_path, monkeypatch, capsys):
    pipeline = importlib.import_module("d3hr.generator.train")
    monkeypatch.setattr(pipeline, "train_vae", lambda *a, **k: pytest.fail("the generator was trained"))
    args = ["--dataset", "digits", "--ipc", "1", *SETS, "--set", "data.limit=20", "--out", str(tmp_path / "r")]
    assert main(["distill", *args]) == 2
    _one_line_error(capsys, "training images; statistics need at least 3")
    assert main(["invert", *args]) == 2
    _one_line_error(capsys, "statistics need at least 3")
    assert sorted(os.listdir(tmp_path / "r")) == sorted([MARKER, ".lock", "config.yaml"])  # nothing computed
