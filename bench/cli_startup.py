"""Wall time of the commands that should answer at once: ``d3hr --help``, ``d3hr verify RUN``, ``d3hr report RUN``.

Each command runs in a fresh ``python -m d3hr`` process (what the ``d3hr`` script does), ``--repeats`` times; the
median and the range are printed. RUN is a digits run distilled here with a tiny config in a temporary folder (or
``--run``, an existing one). Run it alone on the machine (``flock /tmp/d3hr-heavy.lock ...``): start-up time is
mostly imports read from disk and unpickled, so any other load shows in it.

``--json PATH`` also writes the medians (seconds) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A digits run in well under a minute: a few hundred images, a tiny generator trained for one and two epochs.
TINY_RUN = ["--limit", "300", "--ipc", "2", "--set", "generator.vae.epochs=1", "--set", "generator.dit.epochs=1",
            "--set", "generator.vae.block_out_channels=[8,16]", "--set", "generator.dit.num_layers=1",
            "--set", "generator.dit.num_attention_heads=2", "--set", "generator.dit.attention_head_dim=8",
            "--set", "select.candidates=64", "--set", "diffusion.num_steps=10", "--set", "diffusion.inversion_steps=3"]


def d3hr(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``python -m d3hr ARGS``; raise with its stderr when it fails."""
    proc = subprocess.run([sys.executable, "-m", "d3hr", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"d3hr {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc


def make_run(folder: Path, env: dict[str, str]) -> Path:
    """Distill a tiny digits run into ``folder``/run (its cache in ``folder``/cache); return the run folder."""
    run = folder / "run"
    d3hr("distill", "--dataset", "digits", "--out", str(run), *TINY_RUN, env={**env, "D3HR_CACHE": str(folder / "c")})
    return run


def time_command(args: list[str], repeats: int, env: dict[str, str]) -> list[float]:
    """Wall seconds of ``repeats`` fresh runs of ``python -m d3hr ARGS``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        d3hr(*args, env=env)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="an existing run folder (default: distill a tiny digits run in a temporary folder)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write {command: median seconds} here")
    args = p.parse_args()
    env = {**os.environ, "D3HR_QUIET": "1"}
    with tempfile.TemporaryDirectory(prefix="d3hr-cli-startup-") as tmp:
        run = Path(args.run) if args.run else make_run(Path(tmp), env)
        d3hr("report", str(run), env=env)  # the first report may write caches (matplotlib's font list): not timed
        commands = {"--help": ["--help"], "verify RUN": ["verify", str(run)], "report RUN": ["report", str(run)]}
        print(f"# python {sys.version.split()[0]}, {args.repeats} fresh processes per command, run {run.name}")
        print(f"{'command':<16} {'median s':>9} {'min s':>7} {'max s':>7}")
        medians = {}
        for name, cmd in commands.items():
            times = time_command(cmd, args.repeats, env)
            medians[name] = statistics.median(times)
            print(f"d3hr {name:<11} {medians[name]:>9.2f} {min(times):>7.2f} {max(times):>7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(medians, indent=2) + "\n")


if __name__ == "__main__":
    main()
