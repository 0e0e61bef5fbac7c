"""How varied is a distilled set within each class, in pixels? No teacher needed (``d3hr metrics`` reads features).

For each run folder given (the images its manifest lists), per class: the mean Euclidean distance between two of its
images (pixels in [0, 1], flattened; ``d3hr.evaluation.set_metrics.diversity``) and the mean per-pixel standard
deviation; printed as means over classes, beside the same readouts of ``--real`` images per class drawn from the
training set (seeded), as the reference a set of that size would reach if it were as varied as the data.

    .venv/bin/python bench/set_diversity.py GRID/runs/d3hr-ipc50-seed0 CEIL/runs/ddim-ipc50-seed0 --real 50

A set whose distances sit far under the real reference is made of typical images: it can be recognisable (the
teacher agrees with its labels) and still teach a hard-label student less.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from d3hr.evaluation.runner import open_run, read_full_train, read_run_images
from d3hr.evaluation.set_metrics import diversity


def class_diversity(images: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """uint8 images (N, C, H, W) with class indices (N,) -> (mean over classes of the mean pairwise pixel distance,
    mean over classes of the mean per-pixel std); classes with fewer than 2 images are left out."""
    dist, std = [], []
    for c in targets.unique():
        x = images[targets == c].flatten(1).double() / 255  # (n, C*H*W)
        if len(x) >= 2:
            dist.append(diversity(x))
            std.append(float(x.std(dim=0).mean()))
    if not dist:
        raise ValueError("no class has two images")
    return sum(dist) / len(dist), sum(std) / len(std)


def real_draw(targets: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` training images of every class (all of a smaller class), seeded."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in targets.unique():
        idx = (targets == c).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--real", type=int, default=0, help="also this many training images a class (0: none)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"{'set':<40} {'images':>6} {'pairwise L2':>11} {'pixel std':>9}")
    data = None  # (dataset, root, resolution, channels) the runs share: the real reference is read at it
    for run in args.runs:
        cfg, test, manifest = open_run(run)
        here = (cfg.data.name, cfg.data.root, cfg.data.resolution, cfg.data.channels)
        if args.real and data is not None and here != data:
            raise SystemExit(f"{run}: dataset {here} differs from the first run's {data}; --real needs one dataset")
        data = here
        images, targets, _ = read_run_images(run, test, manifest)
        dist, std = class_diversity(images, targets)
        print(f"{run.name:<40} {len(images):>6} {dist:>11.3f} {std:>9.4f}")
    if args.real:
        train, train_targets, _ = read_full_train(cfg)
        idx = real_draw(train_targets, args.real, args.seed)
        dist, std = class_diversity(train[idx], train_targets[idx])
        print(f"{f'real training images, {args.real} a class':<40} {len(idx):>6} {dist:>11.3f} {std:>9.4f}")


if __name__ == "__main__":
    main()
