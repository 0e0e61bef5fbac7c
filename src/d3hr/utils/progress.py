"""Progress of long loops on stderr: a tqdm bar on a terminal, a few plain lines in a log; D3HR_QUIET=1 silences both.

A bar redraws itself in place on a terminal, but written to a file it leaves one line per update (a `make demo` log
grew to 578 KB that way). When stderr is not a terminal, ``progress`` writes one line when the loop starts, one each
time it passes another tenth of its total (at most one every LOG_MIN_SECONDS: a loop of a few seconds leaves its
first and last lines only), and one at the end, each with the count and the elapsed time.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Protocol, TextIO

LOG_STEPS = 10  # lines per loop in a log, besides its first line
LOG_MIN_SECONDS = 2.0  # the least time between two lines of one loop (the last line excepted)


class Progress(Protocol):
    """What the loops use of a progress bar (tqdm's names)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, **values: Any) -> Any: ...

    def close(self) -> Any: ...


def _quiet_env() -> bool:
    """Whether D3HR_QUIET asks for silence (set to anything but '' or '0')."""
    return os.environ.get("D3HR_QUIET", "") not in ("", "0")


def progress(total: int | None = None, desc: str = "", unit: str = "it", quiet: bool | None = None) -> Progress:
    """Progress of a loop of ``total`` ``unit``s on stderr: a tqdm bar on a terminal, else LogProgress lines;
    nothing when quiet (default: the D3HR_QUIET environment variable)."""
    if quiet is None:
        quiet = _quiet_env()
    if quiet:
        return LogProgress(total, desc, unit, stream=None)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
    return LogProgress(total, desc, unit, stream=sys.stderr)


class LogProgress:
    """Progress as a few lines for a log: at the start, at each further tenth of ``total`` (when LOG_MIN_SECONDS
    have passed since the last line) and at ``close``.

    A line reads ``desc: 300/1000 img (30%), 12.5 s[, key=value ...]`` (the values of the last ``set_postfix``).
    Without a known total there is a line at the start and one at the end. ``stream=None`` writes nothing.
    """

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO | None) -> None:
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.start = time.monotonic()
        self.next_step = 1  # the next tenth of total that writes a line
        self.line_at = self.start  # when the last line was written
        self.written_at: int | None = None  # the count of the last line written
        size = "" if total is None else f" {total} {unit}"
        self._write(f"{desc}: started{size}")

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; write a line when the count passes another tenth of the total."""
        self.n += n
        if not self.total:
            return
        step = self.n * LOG_STEPS // self.total
        if step >= self.next_step:
            self.next_step = step + 1
            if time.monotonic() - self.line_at >= LOG_MIN_SECONDS:
                self._line()

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the following lines, e.g. a running loss."""
        self.postfix = values

    def close(self) -> None:
        """Write the final count, unless the last line already showed it."""
        if self.written_at != self.n:
            self._line()

    def _line(self) -> None:
        self.written_at, self.line_at = self.n, time.monotonic()
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        self._write(f"{self.desc}: {count} {self.unit}{share}, {time.monotonic() - self.start:.1f} s{extra}")

    def _write(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)


def say(msg: str) -> None:
    """A status line for the user (stderr), unless D3HR_QUIET is set."""
    if not _quiet_env():
        print(msg, file=sys.stderr, flush=True)
