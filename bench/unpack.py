"""``d3hr unpack`` against ``d3hr generate`` on the same run, side by side in one process (bench/README.md).

    OMP_NUM_THREADS=1 python bench/unpack.py RUN [--repeats 3]

For a D3HR run folder: packs it, then alternately regenerates its images with the generate stage (a copy of the run
without its images: what ``d3hr generate`` does, data loading included) and unpacks the pack into a fresh folder
(pack check, generator hash, candidate redraw, the same generate stage, every image checked against its sha256),
``--repeats`` times each; prints the medians and their ratio. The candidate redraw is timed on its own against the
bound of drawing its normals at the rate torch's seeded generator reaches in the same run (what bench/group_sampling.py
bounds group sampling by). Last, the choice is redone from the packed statistics (float16 skewness) at the run's full
candidate count, class by class against the packed index: the float16 proof at scale.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import d3hr
from d3hr.config import load_config
from d3hr.distillation.group import DRAW_BLOCK, chosen_candidates
from d3hr.distillation.pack import load_pack
from d3hr.distillation.unpack import check_choice


def normals_per_second(n: int = 1 << 24) -> float:
    """torch's seeded CPU generator: standard normals drawn per second (best of three)."""
    g = torch.Generator().manual_seed(0)
    out = torch.empty(n)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        torch.randn(n, generator=g, out=out)
        best = min(best, time.perf_counter() - t0)
    return n / best


def time_generate(run: Path, work: Path) -> float:
    """Seconds of the generate stage (and manifest) on a copy of ``run`` without its images."""
    copy = work / "generate"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("images", "eval", "report.html"))
    cfg = load_config(copy / "config.yaml")
    cfg.out = str(copy)
    t0 = time.perf_counter()
    d3hr.generate(cfg)
    return time.perf_counter() - t0


def time_unpack(pack: Path, work: Path) -> float:
    out = work / "unpack"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    report = d3hr.unpack(pack, out)
    seconds = time.perf_counter() - t0
    assert report["identical"] == report["images"], report["differ"][:3]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        info = d3hr.pack(args.run, work / "set.d3hr")
        pack = load_pack(info["pack"])
        gen, unp = [], []
        for _ in range(args.repeats):
            gen.append(time_generate(args.run, work))
            unp.append(time_unpack(Path(info["pack"]), work))
        t, m = pack.tensors, pack.meta
        ipc, dim = m["ipc"], math.prod(m["latent_shape"])
        t0 = time.perf_counter()
        chosen_candidates(m["config"]["seed"], t["pool"], t["index"], ipc, dim)
        redraw = time.perf_counter() - t0
        bound = len(pack.classes) * DRAW_BLOCK * ipc * dim / normals_per_second()
        t0 = time.perf_counter()
        wrong = check_choice(pack)
        choice = time.perf_counter() - t0
    g, u = statistics.median(gen), statistics.median(unp)
    print(f"run {args.run}: {info['images']} images, {len(pack.classes)} classes, ipc {ipc}, D {dim}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"generate stage (d3hr generate)  median {g:.3f} s  runs {', '.join(f'{x:.3f}' for x in gen)}")
    print(f"unpack (d3hr unpack)            median {u:.3f} s  runs {', '.join(f'{x:.3f}' for x in unp)}")
    print(f"unpack / generate               {u / g:.3f}x")
    print(f"candidate redraw                {1000 * redraw:.1f} ms, bound {1000 * bound:.1f} ms "
          f"({redraw / bound:.2f}x the bound; {DRAW_BLOCK} candidates drawn per class)")
    print(f"choice redone from the pack     {choice:.1f} s at m = {m['config']['select.candidates']}: "
          f"{len(pack.classes) - len(wrong)}/{len(pack.classes)} classes choose the packed candidate with float16 "
          f"skewness{'' if not wrong else ' (differ: ' + ', '.join(wrong) + ')'}")


if __name__ == "__main__":
    main()
