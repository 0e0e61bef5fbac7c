"""Progress bars with ETA on every long loop (tqdm), silenced with D3HR_QUIET=1 or quiet=True."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(total: int | None = None, desc: str = "", unit: str = "it", quiet: bool | None = None) -> tqdm:
    """A tqdm bar to stderr; disabled when quiet (default: the D3HR_QUIET environment variable)."""
    if quiet is None:
        quiet = os.environ.get("D3HR_QUIET", "") not in ("", "0")
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True, leave=False)


def say(msg: str) -> None:
    """A status line for the user (stderr), unless D3HR_QUIET is set."""
    if os.environ.get("D3HR_QUIET", "") in ("", "0"):
        print(msg, file=sys.stderr, flush=True)
