"""Several processes on torch.distributed (launched by torchrun), or a world of one.

d3hr shards work by fixed units (inversion batches of a fixed size, whole candidate pools, whole classes) and merges
results in unit order, so K processes write the same bytes as one. Rank 0 writes the run's bookkeeping (config,
stages.json, manifest); every rank reads the same inputs. Backend: nccl for CUDA devices, gloo otherwise.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from d3hr.errors import D3HRError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (rank 0 is the main one)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, units: Sequence[T]) -> list[T]:
        """This rank's units: every size-th one starting at rank (whole units only)."""
        return list(units[self.rank :: self.size])

    def span(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [lo, hi) of n rows (a batch, a test set), split as ``tensor_split`` does:
        the first n mod size ranks get one row more; all of them in a world of one."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def rows(self, n: int) -> torch.Tensor:
        """The indices of this rank's ``span`` of n rows."""
        return torch.arange(*self.span(n))

    def sum(self, value: float) -> float:
        """``value`` summed over the ranks (itself in a world of one)."""
        if not self.distributed:
            return value
        device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"  # nccl reduces device tensors
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (IPC only: never written to disk)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


_WORLD: World | None = None


def get_world(device: str = "cpu") -> World:
    """The world of this process: from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), initialised once.

    Ranks other than 0 are quiet (no progress bars or status lines). D3HR_DIST_TIMEOUT_MINUTES (default 600) bounds
    how long a rank waits for the others, e.g. while rank 0 trains a generator.
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _WORLD = World()
        return _WORLD
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(local)
        minutes = float(os.environ.get("D3HR_DIST_TIMEOUT_MINUTES", "600"))
        torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                             timeout=datetime.timedelta(minutes=minutes))
        atexit.register(_shutdown)
    if rank != 0:
        os.environ["D3HR_QUIET"] = "1"
    _WORLD = World(rank, size, local)
    return _WORLD


def check_device(device: str) -> str:
    """``device`` if this machine has it (cpu, cuda, cuda:N, mps); else a one-line D3HRError naming it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise D3HRError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise D3HRError(f"device {device!r}: no CUDA GPU is available here (use --device cpu)")
        if dev.index is not None and dev.index >= count:
            raise D3HRError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise D3HRError(f"device {device!r}: MPS is not available here (use --device cpu)")
    elif dev.type != "cpu":
        raise D3HRError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or mps")
    return device


def kernels(device: str | torch.device) -> str:
    """The arithmetic a result was computed with, beside the code, the seed and the thread count: on the CPU the
    vector instruction set PyTorch dispatches to ('AVX2', 'AVX512', ...; another one, or another CPU model, can round
    differently, so a model retrained there is another model), on a GPU its name. Recorded beside results so that a
    difference between machines can be told from a bug."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "cpu":
        return f"cpu {torch.backends.cpu.get_cpu_capability()}"
    return dev.type


def rank_device(device: str, world: World) -> str:
    """One CUDA device per local rank ('cuda' -> 'cuda:<local_rank>'); other devices unchanged."""
    if device == "cuda" and world.distributed:
        return f"cuda:{world.local_rank}"
    return device


def _shutdown() -> None:
    """At exit: wait until every rank is here, then tear the group down (a rank that tears down while another still
    has gloo work in flight aborted the process, 'terminate called without an active exception')."""
    if torch.distributed.is_initialized():
        gc.collect()  # DDP's reducer sits in reference cycles: free it (and its gloo work) while Python is alive
        try:
            torch.distributed.barrier()
        except RuntimeError:  # another rank is gone already: nothing left to wait for
            pass
        torch.distributed.destroy_process_group()


def distributed_now() -> bool:
    """Whether this process has joined a torch.distributed group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def finish(code: int) -> int:
    """End a command run by torchrun: ``code`` unchanged in a world of one. Under torch.distributed, a rank that
    succeeded waits for the others and tears the group down; then every rank leaves with ``os._exit(code)`` after
    flushing its streams, skipping interpreter finalization, where gloo's worker threads still holding tensors
    aborted a rank now and then (SIGABRT, 'terminate called without an active exception'; pytorch/pytorch#179291).
    A rank that failed leaves at once (no barrier: the others may be inside a collective) and torchrun stops them.
    """
    if not distributed_now():
        return code
    if code == 0:
        _shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
