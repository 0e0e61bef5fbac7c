"""The benchmark scripts run (their --quick smoke configurations); their numbers are read by people, not asserted."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(*args):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_group_sampling_quick():
    out = _run(str(BENCH / "group_sampling.py"), "--quick")
    assert "FAIL" not in out and "PASS" in out


def test_diffusion_loops_quick():
    out = _run(str(BENCH / "diffusion_loops.py"), "--quick")
    assert "batch-1 fp32" in out and "round trip (guidance 1), batched bf16" in out


@pytest.mark.slow
def test_end_to_end_quick(tmp_path):
    out = _run(str(BENCH / "end_to_end.py"), "--quick", "--out", str(tmp_path))
    assert "invert MB" in out and len([ln for ln in out.splitlines() if ln.strip().startswith(("300", "600"))]) >= 2


def test_generator_ceiling_round_trips_real_runs_without_touching_them(tmp_path):
    import json

    from d3hr.cli import main
    from tests.conftest import FAST_TRAIN

    grid = tmp_path / "grid"
    sets = [a for s in FAST_TRAIN for a in ("--set", s)]
    assert main(["compare", "--dataset", "digits", "--methods", "d3hr,random-real", "--ipc", "2", "--seeds", "1",
                 "--labels", "soft", "--epochs", "2", "--out", str(grid), *sets]) == 0
    real = grid / "runs" / "random-real-ipc2-seed0"
    before = (real / "eval" / "results.json").read_bytes()
    out = _run(str(BENCH / "generator_ceiling.py"), "--generator-run", str(grid / "runs" / "d3hr-ipc2-seed0"),
               "--real", str(real), "--out", str(tmp_path / "ceiling"), "--epochs", "2")
    assert (real / "eval" / "results.json").read_bytes() == before  # the grid's record was reused, not rewritten
    table = json.loads((tmp_path / "ceiling" / "ceiling.json").read_text())["results"]
    assert set(table) == {"real", "vae", "ddim"} and "ddim" in out
    first = json.loads(before)["records"][0]["top1"]
    assert table["real"]["top1"] == [100 * first]
    for variant in ("vae", "ddim"):
        run = tmp_path / "ceiling" / "runs" / f"{variant}-ipc2-seed0"
        pngs = sorted((run / "images").rglob("*.png"))
        assert len(pngs) == 20  # 10 classes x IPC 2, as in the real run
        assert [p.read_bytes() for p in pngs] != [p.read_bytes() for p in sorted((real / "images").rglob("*.png"))]
        assert json.loads((run / "eval" / "results.json").read_text())["records"][0]["epochs"] == 2
    out = _run(str(BENCH / "teacher_agreement.py"), str(real), str(grid / "runs" / "d3hr-ipc2-seed0"))
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("random-real-ipc2", "d3hr-ipc2"))]
    assert len(rows) == 2 and all(r[1] == "20" and 0 <= float(r[2].rstrip("%")) <= 100 for r in rows)
