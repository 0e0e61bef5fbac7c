"""The commands that should answer at once import neither torch nor diffusers: checked in fresh processes, on
sys.modules (the times are measured by bench/cli_startup.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import d3hr
from d3hr.utils.io import read_json, sha256_file, write_json
from tests.report.test_html import make_run

HEAVY = ("torch", "diffusers", "torchvision")
SRC = str(Path(d3hr.__file__).resolve().parents[1])  # this checkout's src/, whatever is installed
PROBE = """
import json, sys
{code}
print(json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def _heavy_after(code: str) -> list[str]:
    """The HEAVY modules loaded after running ``code`` in a fresh interpreter that imports d3hr from SRC."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _cli(argv: list[str]) -> str:
    return f"from d3hr.cli import main\ntry:\n    assert main({argv!r}) == 0\nexcept SystemExit as exc:\n" \
           "    assert exc.code == 0"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder with images, statistics and results, its manifest listing every file with its sha256."""
    root = make_run(tmp_path_factory.mktemp("startup") / "run")
    manifest = read_json(root / "manifest.json")
    manifest["files"] = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
                         if p.is_file() and p.name != "manifest.json" and p.relative_to(root).parts[0] != "eval"}
    write_json(root / "manifest.json", manifest)
    return root


def test_importing_the_cli_and_the_package_is_light():
    assert _heavy_after("import d3hr.cli") == []
    assert _heavy_after("import d3hr; assert d3hr.__version__ and callable(d3hr.verify)") == []


@pytest.mark.parametrize("command", ["--help", "--version", "verify", "report"])
def test_quick_commands_import_neither_torch_nor_diffusers(run, command):
    argv = [command, str(run)] if command in ("verify", "report") else [command]
    assert _heavy_after(_cli(argv)) == []
    if command == "report":
        assert "skewness histogram" in (run / "report.html").read_text(encoding="utf-8")  # the stats were read


def test_the_probe_sees_heavy_imports(run):
    """The probe would notice: the library API itself does import torch when used."""
    assert "torch" in _heavy_after("import d3hr; d3hr.load_run")


def test_api_names_and_package_names_are_disjoint():
    """d3hr.distill, d3hr.evaluate and d3hr.metrics are the API functions; the packages are d3hr.distillation and
    d3hr.evaluation (whose submodule d3hr.evaluation.metrics holds DD-Ranking's statistics)."""
    import pkgutil

    import d3hr

    packages = {m.name for m in pkgutil.iter_modules(d3hr.__path__)}
    assert {"distillation", "evaluation"} <= packages and not packages & set(d3hr.__all__)
    _heavy_after("import d3hr.distillation.group, d3hr.evaluation.results, d3hr.evaluation.metrics\nimport d3hr\n"
                 "assert all(callable(f) for f in (d3hr.distill, d3hr.evaluate, d3hr.metrics))")
