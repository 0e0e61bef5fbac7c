"""stats.covariance diag | full | lowrank:R side by side: the time of each step per class and the memory of each form.

For D = 256 (Fashion-MNIST's latents) and D = 4096 (DiT-XL/2's 4 x 32 x 32), on synthetic classes of n inverted
latents drawn from a random SPD covariance (a random rank-64 factor plus a random diagonal), one thread:

* accumulate: what inversion adds per image: the moments every form streams (d3hr.distillation.moments), plus
  (full) the co-moments and (full, lowrank) keeping the latent (d3hr.distillation.covariance.JointStream);
* factorise: per class at the end of inversion: diag nothing; full shrinkage + Cholesky + whitened skewness;
  lowrank shrinkage + thin SVD + root + whitened skewness (``covariance.fit``);
* select: group sampling of one class (``group.select_groups``, the same call for every form) timed at m = --m
  candidates and projected linearly to m = --m-project, plus the colouring x = mu + L z of the chosen group.

Each step is timed on --classes classes (2 at D = 4096: full's factorisation takes seconds) and shown per class;
the C = 1000 columns multiply by 1000 (projected, not run). Memory is computed, not measured: stored = the float32
tensors sampling reads (``covariance.storage_bytes``); inversion = what the invert stage holds: moments
(5 float64 (C, D) tensors), co-moments (C x D x D float64, full) and the kept latents (n x C x D float32).
``--quick`` runs D = 64 and 256 only (a smoke configuration of a few seconds).
"""

from __future__ import annotations

import argparse
import time

import torch

from d3hr.config import covariance_form
from d3hr.distillation.covariance import ClassRoot, JointStream, fit, storage_bytes
from d3hr.distillation.group import DRAW_BLOCK, select_groups
from d3hr.distillation.moments import Moments

WEIGHTS = (1.0, 1.0, 0.5)
MB = 1e6


def synthetic_class(n: int, dim: int, seed: int) -> torch.Tensor:
    """n latents (n, D) float32 of a Gaussian with covariance F F^T + diag(d), F (D, 64) random, d in [0.2, 1.2]."""
    g = torch.Generator().manual_seed(seed)
    factor = torch.randn(dim, 64, generator=g) / 8.0
    noise = (0.2 + torch.rand(dim, generator=g)).sqrt()
    return torch.randn(n, 64, generator=g) @ factor.T + noise * torch.randn(n, dim, generator=g)


def inversion_bytes(form: str, dim: int, classes: int, n: int) -> int:
    """Bytes the invert stage holds for one level: moments, co-moments (full), kept latents (full, lowrank)."""
    moments = 5 * classes * dim * 8
    comoments = classes * dim * dim * 8 if form == "full" else 0
    kept = n * classes * dim * 4 if form != "diag" else 0
    return moments + comoments + kept


def measure(dim: int, text: str, n: int, batch: int, classes: int) -> dict[str, float]:
    """Seconds per image (accumulate) and per class (factorise, colour) of one form at dimension D."""
    form, rank = covariance_form(text)
    acc = fac = col = 0.0
    for c in range(classes):
        x = synthetic_class(n, dim, seed=c)
        y = torch.zeros(n, dtype=torch.long)
        stream = JointStream.start(text, [0], 1, dim) if form != "diag" else None
        moments = Moments.zeros(1, dim)
        t0 = time.perf_counter()
        for b in range(0, n, batch):
            xb, yb = x[b : b + batch], y[b : b + batch]
            moments = moments.merge(Moments.expand(Moments.from_batch(xb, yb, 1).compact(), 1))
            if stream is not None:
                stream.add(JointStream.batch(form, yb, [xb]))
        acc += time.perf_counter() - t0
        z = torch.randn(1, 10, dim)
        t0 = time.perf_counter()
        if stream is None:
            std, _ = moments.std().float(), moments.skewness()
        else:
            tensors, _ = fit(stream, 0, text, "auto", [f"c{c}"])
        t1 = time.perf_counter()
        if stream is None:
            _ = std[:, None, :] * z
        elif form == "full":
            ClassRoot.full(tensors["cov_factor"]).color(z)
        else:
            ClassRoot.lowrank(tensors["lowrank_u"], tensors["lowrank_s"], tensors["diag_rest"]).color(z)
        fac, col = fac + t1 - t0, col + time.perf_counter() - t1
    return {"accumulate_per_image": acc / (classes * n), "factorise": fac / classes, "colour": col / classes}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, default=16, help="R of lowrank:R")
    p.add_argument("--n", type=int, default=300, help="inverted images per class (invert.per_class=auto at IPC 10)")
    p.add_argument("--batch", type=int, default=100, help="images per accumulation batch")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--m", type=int, default=256, help="candidates timed")
    p.add_argument("--m-project", type=int, default=10_000, help="candidates projected to (select.candidates)")
    p.add_argument("--quick", action="store_true", help="D = 64 and 256, 1 class each")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dims = [64, 256] if args.quick else [256, 4096]
    forms = ["diag", "full", f"lowrank:{args.rank}"]
    print(f"one thread; n = {args.n} images per class, batches of {args.batch}, IPC {args.ipc}; select timed at "
          f"m = {args.m} and projected to m = {args.m_project}; C = 1000 columns projected (x 1000)")
    print(f"{'form':<12} {'D':>5} {'acc us/img':>10} {'factor s/cls':>12} {'select s/cls':>12} "
          f"{'C=1000 fac+sel h':>16} {'stored MB C=10':>14} {'C=1000':>9} {'inversion MB C=10':>17} {'C=1000':>10}")
    for dim in dims:
        classes = 1 if args.quick else (10 if dim <= 256 else 2)
        zeros = torch.zeros(1, dim)
        select_groups(zeros, zeros + 1, zeros, args.ipc, DRAW_BLOCK, WEIGHTS, 0)  # warm-up
        t0 = time.perf_counter()
        select_groups(zeros, zeros + 1, zeros, args.ipc, args.m, WEIGHTS, 0)
        select_s = (time.perf_counter() - t0) * args.m_project / args.m  # the same call for every form: scoring z
        measure(dim, "diag", args.batch, args.batch, 1)  # warm-up
        for text in forms:
            form, rank = covariance_form(text)
            r = measure(dim, text, args.n, args.batch, classes)
            per_class = r["factorise"] + select_s + r["colour"]
            stored = [storage_bytes(form, rank, dim, c) / MB for c in (10, 1000)]
            held = [inversion_bytes(form, dim, c, args.n) / MB for c in (10, 1000)]
            print(f"{text:<12} {dim:>5} {1e6 * r['accumulate_per_image']:>10.2f} {r['factorise']:>12.4f} "
                  f"{select_s + r['colour']:>12.3f} {1000 * per_class / 3600:>16.2f} {stored[0]:>14.2f} "
                  f"{stored[1]:>9.0f} {held[0]:>17.1f} {held[1]:>10.0f}")
    print("memory is computed from the shapes; times are measured on the classes above (per class) and projected")


if __name__ == "__main__":
    main()
