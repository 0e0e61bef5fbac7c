"""End to end through the CLI on digits, with a fast generator config."""

import json

import numpy as np
import pytest
from PIL import Image

from d3hr.cli import main
from tests.conftest import FAST_TRAIN


def _sets(extra=()):
    out = []
    for s in [*FAST_TRAIN, *extra]:
        out += ["--set", s]
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits") / "run"
    assert main(["distill", "--dataset", "digits", "--ipc", "10", "--out", str(run), *_sets()]) == 0
    return run


def test_distill_writes_the_run_folder(digits_run):
    run = digits_run
    for name in ("config.yaml", "stats.safetensors", "selection.safetensors", "manifest.json", "stages.json"):
        assert (run / name).is_file(), name
    folders = sorted(p.name for p in (run / "images").iterdir())
    assert folders == [f"{i}_{i}" for i in range(10)]
    for f in folders:
        pngs = sorted((run / "images" / f).glob("*.png"))
        assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(10)]
        with Image.open(pngs[0]) as im:
            assert im.size == (8, 8) and im.mode == "L"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["classes"] == {str(i): str(i) for i in range(10)}
    assert manifest["ipc"] == 10 and manifest["method"] == "d3hr" and manifest["seeds"] == {"seed": 0}
    assert "images/0_0/00000.png" in manifest["files"] and "stats.safetensors" in manifest["files"]
    assert {"d3hr", "torch", "diffusers", "python"} <= set(manifest["versions"])
    assert "select.ipc" not in (run / "config.yaml").read_text()
    assert "inversion_steps: 6" in (run / "config.yaml").read_text()


def test_rerun_skips_every_stage(digits_run, capsys, monkeypatch):
    monkeypatch.setenv("D3HR_QUIET", "0")
    before = json.loads((digits_run / "stages.json").read_text())
    mtimes = {p: p.stat().st_mtime_ns for p in digits_run.rglob("*.png")}
    assert main(["distill", "--dataset", "digits", "--ipc", "10", "--out", str(digits_run), *_sets()]) == 0
    err = capsys.readouterr().err
    for stage in ("invert", "select", "generate"):
        assert f"[{stage}] unchanged, skipped" in err
    assert "training" not in err
    assert json.loads((digits_run / "stages.json").read_text()) == before
    assert {p: p.stat().st_mtime_ns for p in digits_run.rglob("*.png")} == mtimes


def test_changing_ipc_reuses_the_generator_and_redoes_only_what_reads_it(digits_run, tmp_path, capsys, monkeypatch):
    """The generator is reused; the statistics are redone because the stopping rule of invert.per_class=auto reads
    the IPC, unless every image is inverted (invert.per_class=all), whose statistics do not depend on it."""
    import shutil

    monkeypatch.setenv("D3HR_QUIET", "0")
    run = tmp_path / "copy"
    shutil.copytree(digits_run, run)
    assert main(["distill", "--ipc", "1", "--out", str(run)]) == 0  # the rest comes from RUN/config.yaml
    err = capsys.readouterr().err
    assert "training" not in err and "[generator] using" in err
    assert json.loads((run / "stages.json").read_text())["invert"]["subsample"]["ipc"] == 1
    for f in (run / "images").iterdir():
        assert len(list(f.glob("*.png"))) == 1
    assert json.loads((run / "manifest.json").read_text())["ipc"] == 1
    assert main(["distill", "--ipc", "10", "--out", str(run), "--set", "invert.per_class=all"]) == 0
    capsys.readouterr()
    stats_mtime = (run / "stats.safetensors").stat().st_mtime_ns
    assert main(["distill", "--ipc", "1", "--out", str(run)]) == 0  # per_class=all now in RUN/config.yaml
    assert "[invert] unchanged, skipped" in capsys.readouterr().err
    assert (run / "stats.safetensors").stat().st_mtime_ns == stats_mtime


def test_stages_run_alone_and_random_strategy_differs(digits_run, tmp_path):
    run = tmp_path / "rs"
    args = ["--dataset", "digits", "--ipc", "10", "--out", str(run), *_sets()]
    assert main(["train-generator", *args]) == 0
    assert main(["invert", *args]) == 0
    assert (run / "stats.safetensors").is_file() and not (run / "selection.safetensors").exists()
    assert main(["select", *args, "--method", "base-rs"]) == 0
    assert main(["generate", *args, "--method", "base-rs"]) == 0
    from d3hr.utils.io import load_tensors

    a, _ = load_tensors(digits_run / "stats.safetensors")
    b, _ = load_tensors(run / "stats.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # same generator from the cache, same statistics
    sel, meta = load_tensors(run / "selection.safetensors")
    assert meta["strategy"] == "random" and int(sel["index"].abs().sum()) == 0


def test_bad_config_gives_one_line_error(tmp_path, capsys):
    assert main(["distill", "--out", str(tmp_path / "x"), "--set", "select.ipcc=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "d3hr: error: unknown config key 'select.ipcc'; did you mean 'select.ipc'?"
    assert main(["distill", "--out", str(tmp_path / "x"), "--ipc", "0"]) == 2
    assert "select.ipc must be >= 1" in capsys.readouterr().err
    assert main(["distill", "--out", str(tmp_path / "x"), "--inversion-steps", "60"]) == 2
    assert "inversion_steps (K=60) must be in [0, num_steps=50)" in capsys.readouterr().err
    assert not (tmp_path / "x" / "stats.safetensors").exists()


def test_report_and_verify_commands(digits_run, capsys):
    assert main(["report", str(digits_run)]) == 0
    html = (digits_run / "report.html").read_text()
    assert "data:image/png;base64," in html and "Normality" in html
    assert main(["verify", str(digits_run)]) == 0
    assert "matches its manifest" in capsys.readouterr().out


def test_evaluate_takes_a_yaml_file_and_set_overrides(digits_run, tmp_path, capsys):
    from d3hr.utils.io import read_json

    settings = tmp_path / "eval.yaml"
    settings.write_text("labels: hard\nseeds: 2\nepochs: 50\n")
    assert main(["evaluate", str(digits_run), "--config", str(settings), "--set", "epochs=1", "--seeds", "1"]) == 0
    records = [(r["labels"], r["recipe"], r["epochs"], r["seed"])
               for r in read_json(digits_run / "eval" / "results.json")["records"] if r["labels"] == "hard"]
    assert records == [("hard", "dc", 1, 0)]  # the file's labels, --set's epochs, the flag's seeds
