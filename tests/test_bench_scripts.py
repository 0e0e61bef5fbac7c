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
