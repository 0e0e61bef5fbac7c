import os
import subprocess
import sys

import pytest
import torch

from d3hr.utils.dist import World, finish


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 5, 7, 101])
def test_rank_shares_partition_the_rows_like_tensor_split(n, size):
    spans = [World(rank=r, size=size).span(n) for r in range(size)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no gaps or overlaps
    for r in range(size):
        assert torch.equal(World(rank=r, size=size).rows(n), torch.arange(n).tensor_split(size)[r])


def test_finish_returns_the_code_in_a_world_of_one():
    assert finish(0) == 0 and finish(2) == 2  # no process group: nothing to tear down, no os._exit


def _torchrun_script(tmp_path, body):
    script = tmp_path / "job.py"
    script.write_text("import atexit, pathlib, sys\nfrom d3hr.utils.dist import get_world, finish\n"
                      "w = get_world()\n" + body)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)


def test_finish_under_torchrun_tears_down_and_skips_interpreter_finalization(tmp_path):
    """Every rank leaves through os._exit after the group is torn down: atexit handlers registered by the command (and
    interpreter finalization, where gloo's threads aborted a rank now and then) never run; the code is kept."""
    proc = _torchrun_script(tmp_path, "atexit.register(lambda: pathlib.Path(f'atexit-{w.rank}').touch())\n"
                                      "w.barrier()\nprint(f'rank{w.rank}', flush=True)\nsys.exit(finish(0))\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rank0" in proc.stdout and "rank1" in proc.stdout  # output flushed before leaving
    assert not list(tmp_path.glob("atexit-*"))
    failed = _torchrun_script(tmp_path, "sys.exit(finish(3 if w.rank == 1 else 0))\n")
    assert failed.returncode != 0
