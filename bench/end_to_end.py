"""Wall time and peak memory of each stage of ``d3hr distill`` as the training set grows.

For every size N in ``--sizes`` it runs ``d3hr invert``, ``d3hr select`` and ``d3hr generate`` on the first N
training images, each stage in its own process (so its peak resident memory is its own), in a fresh run folder with
a fresh statistics cache, and reads the seconds and peak RSS that each stage records in RUN/stages.json. It prints
one table with the cost per stage and its growth relative to the smallest N next to the growth of N: encoding +
inversion should grow linearly in N with flat memory (moments are streamed; no stage holds all latents), selection
and generation should not depend on N at all.

A generator is needed (``--generator``: a diffusers directory, e.g. the one d3hr trained and cached for the dataset;
its guidance defaults to 1.0 here, as for a trained-here generator). ``--inversion-steps`` defaults to 5 so that
60k images fit a benchmark; inversion cost is linear in K, so the seconds scale by K/5 for the full K.

    OMP_NUM_THREADS=2 .venv/bin/python bench/end_to_end.py --dataset fashion-mnist \\
        --generator ~/.cache/d3hr/generators/<key> --sizes 6000,30000,60000 --out /tmp/e2e
    .venv/bin/python bench/end_to_end.py --quick --out /tmp/e2e      # digits, a tiny generator trained first
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

STAGES = ("invert", "select", "generate")


def run_stage(stage: str, args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "d3hr", stage, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"d3hr {stage} failed:\n{proc.stderr[-2000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--root")
    p.add_argument("--generator", help="diffusers directory of the generator")
    p.add_argument("--sizes", default="6000,30000,60000")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--inversion-steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256, help="inversion batch size")
    p.add_argument("--out", required=True, help="scratch folder for the runs")
    p.add_argument("--json", help="also write the table as JSON here")
    p.add_argument("--quick", action="store_true", help="digits with a tiny generator trained first: a smoke run")
    args = p.parse_args()
    out = Path(args.out)
    env = {**os.environ, "D3HR_QUIET": "1"}
    common = ["--ipc", str(args.ipc), "--inversion-steps", str(args.inversion_steps),
              "--set", f"diffusion.batch_size={args.batch_size}", "--guidance", "1.0"]
    if args.quick:
        args.dataset, args.sizes, args.ipc, args.inversion_steps = "digits", "300,600,1200", 5, 3
        common = ["--ipc", "5", "--inversion-steps", "3", "--set", "diffusion.num_steps=10", "--guidance", "1.0",
                  "--set", "select.candidates=256"]
        if not args.generator:  # train a tiny generator once, then use it as a pretrained one
            env["D3HR_CACHE"] = str(out / "cache")
            tiny = ["--dataset", "digits", "--out", str(out / "gen"), "--set", "generator.vae.epochs=1",
                    "--set", "generator.dit.epochs=1"]
            run_stage("train-generator", tiny, env)
            args.generator = json.loads((out / "gen" / "generator.json").read_text())["path"]
    if not args.generator:
        raise SystemExit("--generator is required (or --quick)")
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        run = out / f"n{n}"
        shutil.rmtree(run, ignore_errors=True)
        stage_env = {**env, "D3HR_CACHE": str(run / "cache")}  # fresh statistics cache: really invert
        data = ["--dataset", args.dataset, "--limit", str(n), "--generator", args.generator, "--out", str(run / "run")]
        if args.root:
            data += ["--root", args.root]
        for stage in STAGES:
            run_stage(stage, [*data, *common], stage_env)
        state = json.loads((run / "run" / "stages.json").read_text())
        rows.append({"images": n, **{f"{s}_s": state[s]["seconds"] for s in STAGES},
                     **{f"{s}_peak_mb": state[s]["peak_rss_mb"] for s in STAGES}})
        print(f"  done N={n}: " + ", ".join(f"{s} {state[s]['seconds']:.1f}s {state[s]['peak_rss_mb']:.0f}MB"
                                            for s in STAGES), flush=True)
    first = rows[0]
    print(f"\n# {args.dataset}, IPC {args.ipc}, K={args.inversion_steps}, generator {args.generator}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    head = f"{'N':>7} {'N ratio':>8}"
    for s in STAGES:
        head += f" {s + ' s':>12} {'ratio':>6} {s + ' MB':>12}"
    print(head)
    for r in rows:
        line = f"{r['images']:>7} {r['images'] / first['images']:>8.1f}"
        for s in STAGES:
            line += f" {r[f'{s}_s']:>12.1f} {r[f'{s}_s'] / max(first[f'{s}_s'], 1e-9):>6.2f} {r[f'{s}_peak_mb']:>12.0f}"
        print(line)
    print("peak MB: peak resident memory of the process that ran the stage (model, data and work buffers)")
    if args.json:
        Path(args.json).write_text(json.dumps({"dataset": args.dataset, "ipc": args.ipc,
                                               "inversion_steps": args.inversion_steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
