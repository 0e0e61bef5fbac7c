"""d3hr.utils.heap: freed memory stays in the process (no page faults when a step's tensors come back), applied by
the d3hr command and not by in-process calls of cli.main."""

import os
import subprocess
import sys

import pytest

from d3hr import cli

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
FAULTS = """
import resource, sys, torch
from d3hr.utils.heap import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.empty(8 << 20).fill_(1.0)  # 32 MB once, so that the heap has grown before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):  # a training step's pattern: a large tensor allocated, written, freed
    torch.empty(16 << 20).fill_(1.0)  # 64 MB, above glibc's mmap threshold
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@linux
def test_freed_blocks_are_reused_without_page_faults():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    assert default > 40 * (64 << 20) // 4096 // 2  # every 64 MB block faulted in again (4 KiB pages)
    assert kept < default / 5  # only the heap's growth to its peak faults


@linux
def test_opting_out_leaves_malloc_alone():
    applied, faults = _faults("keep", D3HR_MALLOC="system")
    assert applied == "False" and faults > 40 * (64 << 20) // 4096 // 2


def test_the_d3hr_command_applies_it_and_in_process_calls_do_not(monkeypatch, capsys):
    from d3hr.utils import heap

    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["methods"]) == 0 and calls == []
    monkeypatch.setattr(sys, "argv", ["d3hr", "methods"])
    assert cli.main() == 0 and calls == [1]
