"""Progress on stderr: a bar on a terminal, a bounded number of plain lines in a log, nothing when quiet."""

import io
import sys

import pytest

from d3hr.utils import progress as progress_module
from d3hr.utils.progress import LOG_STEPS, progress


@pytest.fixture
def every_tenth(monkeypatch):
    """Lines at every tenth however fast the loop runs."""
    monkeypatch.setattr(progress_module, "LOG_MIN_SECONDS", 0.0)


def _loop(total, **kwargs):
    bar = progress(total, "train DiT", "step", **kwargs)
    for i in range(total):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
    bar.close()
    return bar


def test_a_log_gets_a_line_per_tenth_with_counts_and_time(monkeypatch, capsys, every_tenth):
    monkeypatch.delenv("D3HR_QUIET", raising=False)
    _loop(1000)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "train DiT: started 1000 step"
    assert len(lines) == 1 + LOG_STEPS
    assert [ln.split()[2] for ln in lines[1:]] == [f"{100 * k}/1000" for k in range(1, 11)]
    assert lines[-1].startswith("train DiT: 1000/1000 step (100%), ") and lines[-1].endswith(" s, loss=0.0010")


def test_a_resumed_or_uneven_loop_stays_bounded(monkeypatch, capsys, every_tenth):
    monkeypatch.delenv("D3HR_QUIET", raising=False)
    bar = progress(7, "invert", "img", quiet=False)
    bar.update(3)  # resumed: three done before
    for _ in range(4):
        bar.update(1)
    bar.close()
    bar = progress(None, "encode", "img", quiet=False)
    for _ in range(500):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["invert: started 7 img", lines[1]] and lines[1].startswith("invert: 3/7 img (42%), ")
    assert len([ln for ln in lines if ln.startswith("invert")]) == 1 + 5  # 3, 4, 5, 6 and 7 of 7 each pass a tenth
    assert [ln for ln in lines if ln.startswith("encode")][0] == "encode: started"
    assert [ln.split(",")[0] for ln in lines if ln.startswith("encode")][1:] == ["encode: 500 img"]


def test_a_fast_loop_leaves_its_first_and_last_lines(monkeypatch, capsys):
    monkeypatch.delenv("D3HR_QUIET", raising=False)
    monkeypatch.setattr(progress_module, "LOG_MIN_SECONDS", 3600.0)
    _loop(1000)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "train DiT: started 1000 step" and lines[1].startswith("train DiT: 1000/1000 step (100%)")
    assert len(lines) == 2


def test_quiet_writes_nothing(monkeypatch, capsys):
    monkeypatch.setenv("D3HR_QUIET", "1")
    _loop(100)
    _loop(100, quiet=True)
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("D3HR_QUIET", raising=False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = _loop(50)
    assert type(bar).__module__.startswith("tqdm")
    assert "\r" in sys.stderr.getvalue()  # redrawn in place
