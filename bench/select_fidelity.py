"""Fidelity of group sampling at the Fashion-MNIST statistics shape (D = 256, C = 10): the cost of m = 1e5 against
1e4 candidates, and whether the biased (g1) or sample-size-adjusted (G1) group skewness changes the chosen groups.

Class statistics are synthetic with the measured scale of Fashion-MNIST's inverted latents (README: mean |skewness|
0.13): mu ~ N(0, 1), sigma ~ U(0.5, 1.5), gamma ~ N(0, 0.16^2) per dimension (only sigma and gamma enter the loss).
For each IPC it prints the seconds of ``select_groups`` (per-class pools, as the default) at each m, and for
m = 1e4 the share of classes whose choice differs between the estimators and the G1-loss the g1 choice gives up
against the G1 optimum. Run under a fixed thread count, nothing else running.
"""

from __future__ import annotations

import argparse
import time

import torch

from d3hr.distillation.group import group_loss_reference, select_groups

WEIGHTS = (1.0, 1.0, 0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--m", type=int, nargs="+", default=[10000, 100000])
    p.add_argument("--seeds", type=int, default=3, help="selection seeds for the estimator comparison")
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(args.classes, args.dim, generator=g)
    std = torch.rand(args.classes, args.dim, generator=g) + 0.5
    skew = torch.randn(args.classes, args.dim, generator=g) * 0.16
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; D={args.dim} C={args.classes}")
    for ipc in args.ipc:
        times = {}
        for m in args.m:
            t0 = time.perf_counter()
            select_groups(mean, std, skew, ipc, m, WEIGHTS, seed=0)
            times[m] = time.perf_counter() - t0
        line = "  ".join(f"m={m}: {t:.2f} s" for m, t in times.items())
        ratio = times[args.m[-1]] / times[args.m[0]]
        changed, lost = 0, []
        for seed in range(args.seeds):
            b = select_groups(mean, std, skew, ipc, args.m[0], WEIGHTS, seed=seed, skewness="biased")
            a = select_groups(mean, std, skew, ipc, args.m[0], WEIGHTS, seed=seed, skewness="adjusted")
            changed += int((a.index != b.index).sum())
            # the G1 loss of the g1 choice, against the G1 optimum (relative)
            for c in range(args.classes):
                lb = group_loss_reference(b.x[c : c + 1], mean[c], std[c], skew[c], WEIGHTS, "adjusted")
                la = group_loss_reference(a.x[c : c + 1], mean[c], std[c], skew[c], WEIGHTS, "adjusted")
                lost.append(float(lb / la - 1))
        n = args.seeds * args.classes
        print(f"IPC {ipc:>3}: {line}  ({ratio:.1f}x)  |  m={args.m[0]}: choice differs g1 vs G1 in {changed}/{n} "
              f"classes; G1 loss of the g1 choice {100 * sum(lost) / n:+.2f}% mean, {100 * max(lost):+.2f}% worst")


if __name__ == "__main__":
    main()
