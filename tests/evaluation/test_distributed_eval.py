"""torchrun with 2 processes (gloo): the teacher and the student train with DDP and match one process closely."""

import os
import shutil
import subprocess
import sys

import pytest

from d3hr.cli import main
from d3hr.utils.io import read_json
from tests.conftest import FAST_TRAIN

SETS = [a for s in [*FAST_TRAIN, "data.limit=300"] for a in ("--set", s)]
EVAL = ["--labels", "soft", "--seeds", "1", "--epochs", "3", "--teacher-epochs", "5"]


def _run(cmd, cache):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "D3HR_QUIET": "1", "D3HR_CACHE": str(cache)}  # the teacher's cache
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _torchrun(run, cache):
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "d3hr",
          "evaluate", str(run), *EVAL], cache)


def test_evaluate_under_torchrun_matches_one_process(tmp_path):
    one = tmp_path / "one" / "run"
    assert main(["distill", "--dataset", "digits", "--ipc", "5", "--method", "random-real", "--out", str(one),
                 *SETS]) == 0
    shutil.copytree(one, tmp_path / "fresh" / "run")
    _run([sys.executable, "-m", "d3hr", "evaluate", str(one), *EVAL], tmp_path / "cache")
    # The student with DDP, scored against the same (copied) teacher: the same training up to float rounding
    # (measured: identical loss after 1 epoch, 2e-4 relative after 3 and 10 epochs as rounding differences grow).
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    (tmp_path / "two" / "run" / "eval" / "results.json").unlink()
    proc = _torchrun(tmp_path / "two" / "run", tmp_path / "cache")
    assert proc.stdout.count("d3hr: evaluated") == 1  # the summary comes from rank 0 only
    a, b = (read_json(tmp_path / d / "run" / "eval" / "results.json") for d in ("one", "two"))
    (ra,), (rb,) = a["records"], b["records"]
    assert ra["processes"] == 1 and rb["processes"] == 2
    assert abs(ra["top1"] - rb["top1"]) <= 0.01
    assert rb["final_loss"] == pytest.approx(ra["final_loss"], rel=1e-3)
    # The teacher with DDP (an empty cache): close to the one trained by one process.
    _torchrun(tmp_path / "fresh" / "run", tmp_path / "fresh-cache")
    ta = a["teachers"]["convnet"]["test_top1"]
    tc = read_json(tmp_path / "fresh" / "run" / "eval" / "results.json")["teachers"]["convnet"]["test_top1"]
    assert ta > 0.5 and abs(ta - tc) <= 0.02
