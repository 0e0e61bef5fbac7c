"""Property-based: files d3hr reads back (manifest.json, stages.json, eval/results.json) and config values of any
shape give a result or a one-line error (exit 2, or a D3HRError whose message is one line), never a traceback.

Deterministic (``derandomize=True``, no example database); 150 examples per property, each a fraction of a second
(verify/report on a ten-image run folder; config values against an --out that is a file, so no work can start).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d3hr.cli import main
from d3hr.config import Config
from d3hr.errors import D3HRError
from d3hr.evaluation.results import read_results
from d3hr.utils.folders import write_marker
from d3hr.utils.io import write_json, write_text
from tests.test_config_properties import LEAVES

SETTINGS = {"deadline": None, "derandomize": True, "database": None, "max_examples": 150,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}
SHA = "0" * 64
NAMES = ["files", "classes", "class_folders", "method", "ipc", "stages", "format_version", "key", "seconds",
         "normality_z0", "mean_loss", "short_classes", "records", "summary", "teachers", "top1", "seed", "student",
         "labels", "epochs", "top1_mean", "top1_std", "test_top1", "0", "1", "images/0_0/00000.png", "0_0"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.just(SHA),
                    st.text(st.sampled_from("ab0_/.\x00\n"), max_size=6), st.sampled_from(NAMES))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=4), inner, max_size=4), max_leaves=10)


@st.composite
def almost_a_manifest(draw) -> Any:
    """A manifest with one part replaced by arbitrary JSON (or any JSON at all)."""
    good = {"format_version": 1, "classes": {"0": "a", "1": "b"}, "class_folders": ["0_a", "1_b"], "method": "d3hr",
            "ipc": 1, "stages": {"select": {"key": "k", "seconds": 1.0}},
            "files": {"images/0_a/00000.png": SHA, "images/1_b/00000.png": SHA}}
    if draw(st.booleans()):
        return draw(JSON)
    return {**good, draw(st.sampled_from(sorted(good))): draw(JSON)}


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


def _assert_one_line_or_fine(rc: int, err: str) -> None:
    assert "Traceback" not in err
    if rc == 2:
        assert err.count("\n") == 1 and err.startswith("d3hr: error: "), err
    else:
        assert rc in (0, 1), (rc, err)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A marked run folder with a config, two class folders of one PNG each, and nothing else."""
    from PIL import Image

    root = tmp_path_factory.mktemp("shapes") / "run"
    root.mkdir()
    write_marker(root, "run")
    write_text(root / "config.yaml", Config(out=str(root)).to_yaml())
    for folder in ("0_a", "1_b"):
        (root / "images" / folder).mkdir(parents=True)
        Image.new("L", (8, 8)).save(root / "images" / folder / "00000.png")
    return root


@settings(**SETTINGS)
@given(manifest=almost_a_manifest())
def test_any_manifest_gives_a_result_or_one_line(run, manifest):
    write_json(run / "manifest.json", manifest)
    for command in ("verify", "report"):
        _assert_one_line_or_fine(*_cli([command, str(run)]))


@settings(**SETTINGS)
@given(stages=JSON)
def test_any_stages_file_gives_a_result_or_one_line(run, stages):
    write_json(run / "manifest.json", {"classes": {"0": "a", "1": "b"}, "files": {}})
    write_json(run / "stages.json", stages)
    _assert_one_line_or_fine(*_cli(["report", str(run)]))
    from d3hr.distillation.pipeline import Run

    try:
        assert isinstance(Run(Config(out=str(run))).state(), dict)
    except D3HRError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(run / "stages.json"))
    finally:
        (run / "stages.json").unlink()


@settings(**SETTINGS)
@given(results=JSON)
def test_any_results_file_gives_a_result_or_one_line(run, results):
    path = run / "eval" / "results.json"
    write_json(run / "manifest.json", {"classes": {"0": "a", "1": "b"}, "files": {}})
    write_json(path, results)
    try:
        try:
            assert isinstance(read_results(path)["records"], list)
        except D3HRError as exc:
            assert "\n" not in str(exc)
        _assert_one_line_or_fine(*_cli(["report", str(run)]))
    finally:
        shutil.rmtree(run / "eval")


@settings(**SETTINGS)
@given(key=st.sampled_from(sorted(LEAVES)), value=JSON)
def test_any_config_value_is_refused_in_one_line_before_work(tmp_path, monkeypatch, key, value):
    """--out is a file: a value that passes every check is refused there, so each example returns at once."""
    monkeypatch.chdir(tmp_path)  # a relative generator.cache_dir is created here, not in the checkout
    out = tmp_path / "file"
    out.write_text("x")
    rc, err = _cli(["distill", "--out", str(out), "--set", f"{key}={json.dumps(value)}"])
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1 and err.startswith("d3hr: error: "), err
    assert out.read_text() == "x"
