"""torchrun with 2 processes (gloo) writes the same statistics, selection and images as one process."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from d3hr.utils.io import read_json
from tests.conftest import FAST_TRAIN

# Inversion in rounds of 20 images per class (200 images: 3 batches, the last one short, 2 on rank 0 and 1 on
# rank 1), most classes stopped by the rule at 40 of their 53-67 images. pools=3: pools 0 and 2 on rank 0, pool 1
# on rank 1.
SETS = [*FAST_TRAIN, "diffusion.batch_size=70", "select.pools=3", "invert.check_every=20", "invert.tolerance=0.3"]
ARGS = ["--dataset", "digits", "--ipc", "3"] + [a for s in SETS for a in ("--set", s)]


def _digests(run: Path) -> dict[str, str]:
    names = ["stats.safetensors", "selection.safetensors"] + [
        p.relative_to(run).as_posix() for p in sorted((run / "images").rglob("*.png"))]
    return {n: hashlib.sha256((run / n).read_bytes()).hexdigest() for n in names}


def _run(cmd: list[str]) -> None:
    # One thread per process in both runs: CPU kernels may round differently with another number of threads.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "D3HR_QUIET": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("method", ["d3hr", "base-rs"])
def test_torchrun_two_processes_match_one(tmp_path, method):
    args = [*ARGS, "--method", method]
    _run([sys.executable, "-m", "d3hr", "distill", *args, "--out", str(tmp_path / "one")])
    shutil.rmtree(Path(os.environ["D3HR_CACHE"]) / "stats")  # make the second run really invert
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "d3hr",
          "distill", *args, "--out", str(tmp_path / "two")])
    one, two = _digests(tmp_path / "one"), _digests(tmp_path / "two")
    assert len(one) == 2 + 10 * 3
    assert one == two
    stages = read_json(tmp_path / "two" / "stages.json")
    assert stages["invert"]["processes"] == 2 and stages["generate"]["processes"] == 2
    assert "from_cache" not in stages["invert"]
    assert stages["invert"]["subsample"]["inverted"] < 600  # the rule stopped classes before data.limit's 600
    manifest = read_json(tmp_path / "two" / "manifest.json")
    assert manifest["files"]["selection.safetensors"] == one["selection.safetensors"]


@pytest.mark.parametrize("covariance", ["full", "lowrank:4"])
def test_torchrun_two_processes_match_one_with_a_covariance(tmp_path, covariance):
    """Co-moments and kept latents gathered from both ranks in batch order: the same class models and bytes."""
    args = [*ARGS, "--set", f"stats.covariance={covariance}"]
    _run([sys.executable, "-m", "d3hr", "distill", *args, "--out", str(tmp_path / "one")])
    shutil.rmtree(Path(os.environ["D3HR_CACHE"]) / "stats")
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "d3hr",
          "distill", *args, "--out", str(tmp_path / "two")])
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")
    stages = read_json(tmp_path / "two" / "stages.json")
    assert stages["invert"]["processes"] == 2 and stages["invert"]["covariance"] == covariance
