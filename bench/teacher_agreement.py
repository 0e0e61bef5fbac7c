"""How well do a distilled set's images carry their own labels? The grid's teacher reads every image.

For each run folder given (the images its manifest lists, ``RUN/config.yaml``), the cached soft-label teacher of its
grid (in the d3hr cache, or ``RUN/../.teachers`` for grids of earlier versions; trained on the whole training set)
classifies every image, unaugmented, and this prints per run: the share of images the teacher assigns to their own
folder's class, and the teacher's mean probability for that class. With hard labels a student learns exactly the
folder's class, so images the teacher reads as another class are label noise; with soft labels the teacher's
distribution replaces the folder's label.

    .venv/bin/python bench/teacher_agreement.py GRID/runs/d3hr-ipc10-seed{0,1,2} GRID/runs/random-real-ipc10-seed0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from d3hr.evaluation.runner import open_run, read_run_images
from d3hr.evaluation.teacher import load_teacher, teacher_dir, teacher_path, teacher_recipe
from d3hr.evaluation.train import to_input


def agreement(run: Path, arch: str = "convnet") -> tuple[int, float, float]:
    """(images, share the teacher assigns to their own class, mean teacher probability of their own class)."""
    cfg, test, manifest = open_run(run)
    images, targets, _ = read_run_images(run, test, manifest)
    folder = teacher_dir(cfg.data, test, cfg.generator.cache_dir)
    path = teacher_path(folder, arch, teacher_recipe(folder, cfg.data, arch))
    if not path.is_file():
        raise SystemExit(f"{run}: no cached teacher at {path} (evaluate the grid with soft labels first)")
    teacher, _ = load_teacher(path)
    with torch.no_grad():
        prob = torch.cat([teacher(to_input(images[i : i + 256])).softmax(dim=1) for i in range(0, len(images), 256)])
    own = prob[torch.arange(len(targets)), targets]
    return len(targets), float((prob.argmax(dim=1) == targets).float().mean()), float(own.mean())


def main() -> None:
    from d3hr.utils.heap import keep_freed_memory

    keep_freed_memory()  # as the d3hr command does: 1.3-1.6x faster training steps here
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--teacher", default="convnet")
    args = p.parse_args()
    print(f"{'run':<45} {'images':>6} {'teacher agrees':>15} {'p(own class)':>13}")
    for run in args.runs:
        n, agree, own = agreement(run, args.teacher)
        print(f"{run.name:<45} {n:>6} {100 * agree:>14.1f}% {own:>13.3f}")


if __name__ == "__main__":
    main()
