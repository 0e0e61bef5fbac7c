"""torchrun with 2 processes (gloo): the generator trains data-parallel and matches one process up to rounding."""

import os
import subprocess
import sys

import torch

from d3hr.generator import load_generator
from d3hr.utils.io import read_json
from tests.conftest import FAST_TRAIN

ARGS = ["--dataset", "digits"] + [a for s in FAST_TRAIN for a in ("--set", s)]


def _run(cmd, cache):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "D3HR_QUIET": "1", "D3HR_CACHE": str(cache)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_train_generator_under_torchrun_matches_one_process(tmp_path):
    _run([sys.executable, "-m", "d3hr", "train-generator", *ARGS, "--out", str(tmp_path / "one")], tmp_path / "c1")
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "d3hr",
          "train-generator", *ARGS, "--out", str(tmp_path / "two")], tmp_path / "c2")
    one, two = (read_json(tmp_path / d / "generator.json")["path"] for d in ("one", "two"))
    assert read_json(tmp_path / "two" / "stages.json")["generator"]["processes"] == 2
    a, b = load_generator(one), load_generator(two)
    for key in ("vae_mse_per_epoch", "dit_loss_per_epoch"):
        assert len(a.info[key]) == len(b.info[key]) > 0
        for x, y in zip(a.info[key], b.info[key]):
            assert abs(x - y) <= 1e-3 * abs(x)
    for (name, p), q in zip(a.transformer.state_dict().items(), b.transformer.state_dict().values()):
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-4), name
    assert not torch.equal(a.transformer.pos_embed.proj.weight, torch.zeros_like(a.transformer.pos_embed.proj.weight))
