"""Keep freed memory in the process, so that training steps stop paying the kernel for their activations' pages.

glibc's malloc serves every block above its mmap threshold (adaptive, at most 32 MB on 64-bit systems) with a fresh
mmap and returns it to the kernel with munmap on free. A training step allocates and frees activations of tens of
MB (ConvNet-3's first output at batch 256 and 28 px is 100 MB), so each step faults in its pages again, zeroed by
the kernel: on the development VM about 100,000-200,000 minor faults per step and a quarter to a third of the CPU
time in the kernel. ``keep_freed_memory`` sets, through ``mallopt``:

- ``M_MMAP_MAX = 0``: no block gets its own mapping; every allocation comes from the heap (glibc still maps memory
  when the heap cannot grow);
- ``M_TRIM_THRESHOLD = 2**31 - 1`` (mallopt's largest): the heap's free top is given back only beyond 2 GiB.

Freed blocks are then reused by the next step without a fault. Measured by ``bench/allocator.py`` on the real
training loop (2 threads): 1.3-1.6x faster steps for recipes ``dc`` and ``teacher``, identical losses; jemalloc
with purging off does the same, glibc with transparent huge pages about half of it. The price: a process keeps most of
its peak heap until it exits (freed blocks are reused, not returned), which a d3hr command does when it ends.

The ``d3hr`` command applies it at start (``D3HR_MALLOC=system`` leaves malloc alone); a Python program that trains
for long can call it once. It does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # bytes; mallopt takes an int
ENV = "D3HR_MALLOC"  # "system": leave malloc as it is


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module docstring); True when it was applied, False
    when the C library is not glibc or ``D3HR_MALLOC=system``."""
    if os.environ.get(ENV, "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library Python runs on (no ldconfig call, as find_library makes)
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_MAX, 0) != 1:
        return False
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
