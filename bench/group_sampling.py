"""Group sampling (D3HR, Sec. 4.3): the paper's brute-force scoring against d3hr's matrix-product scoring.

What is measured, side by side in one run and on the same candidates:

* brute force: a re-implementation of the paper's procedure, written from its description. For one class with
  per-dimension mean mu, std sigma and skewness gamma it draws batches of candidate groups x = mu + sigma * z of shape
  (batch, IPC, D), computes each group's per-dimension mean, std (torch.std, unbiased) and skewness (biased Fisher,
  mean(d^3) / mean(d^2)^1.5), scores L = 1 ||mean - mu|| + 1 ||std - sigma|| + 0.5 ||skew - gamma|| and keeps the
  best of m candidates. The z come from ``d3hr.distillation.group.draw_candidates`` with the class's own pool, so the
  brute force scores exactly the candidates that d3hr scores.
* d3hr, per-class pools: ``select_groups(..., pools=None)``: every class draws and scores its own m candidates.
* d3hr, shared pool: ``select_groups(..., pools=1)``: one pool of m candidates scored against all C classes at once
  by three (m x D) @ (D x C) products.
* a lower bound from rates measured here: normals/s of ``torch.randn`` with a generator, float32 GEMM FLOP/s of an
  (m x D) @ (D x C) product (m capped at 8192 rows) and memory bandwidth (best of a 256 MB sum and copy). For a
  pool shared by C classes the bound per class is
  [m IPC D / normals_rate + 3 * 2 m D C / gemm_rate + 4 m IPC D bytes / bandwidth] / C;
  per-class pools are the same formula with C = 1.

Costs per class of the brute force and of per-class pools do not depend on C, so they are timed once per
(D, IPC, m) on the first ``--time-classes`` classes and shown in every C row; the shared pool is timed for all C
classes and divided by C. The check compares chosen candidate indices: brute force against per-class pools on every
timed class, and against the shared pool on class 0 (which draws pool 0 in both modes). A differing choice counts as
a float tie, not a failure, when both groups' float64 reference losses agree to 1e-5 relative.

Run with a fixed thread count (e.g. OMP_NUM_THREADS=2); ``--quick`` is a smoke configuration of a few seconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from d3hr.distillation.group import DRAW_BLOCK, draw_candidates, group_loss_reference, select_groups

WEIGHTS = (1.0, 1.0, 0.5)  # lambda_mu, lambda_sigma, lambda_gamma of the paper
TIE_RTOL = 1e-5
FULL = {"dims": [4096, 256], "ipc": [10, 50], "m": [10_000], "classes": [10, 1000], "time_classes": 2}
QUICK = {"dims": [128], "ipc": [5, 10], "m": [1024], "classes": [4, 32], "time_classes": 2}


@dataclass
class Rates:
    """Throughputs measured on this machine."""

    normals: float  # standard normals per second, torch.randn with a generator
    read_bw: float  # bytes per second, large float32 sum
    copy_bw: float  # bytes per second (read + write), large float32 copy
    gemm: dict[tuple[int, int], float]  # (D, C) -> float32 FLOP/s of (rows x D) @ (D x C)

    @property
    def bandwidth(self) -> float:
        """The higher of the two bandwidths, so that the bound stays a lower bound."""
        return max(self.read_bw, self.copy_bw)


@dataclass
class PerClass:
    """Per-class timings of the brute force and of d3hr with per-class pools, and their choices."""

    brute_s: float
    pools_s: float
    brute_index: list[int]
    pools_index: list[int]
    ties: int  # differing choices whose float64 losses agree to TIE_RTOL


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """Result and wall time of one call."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure_bandwidth(numel: int = 1 << 26) -> tuple[float, float]:
    """Bytes/s of a float32 sum (read) and of a copy (read + write) of ``numel`` elements, far beyond the caches."""
    src = torch.ones(numel)
    dst = torch.empty_like(src)
    nbytes = numel * src.element_size()
    return nbytes / best_time(lambda: src.sum()), 2 * nbytes / best_time(lambda: dst.copy_(src))


def measure_rates(dims: list[int], classes: list[int], m_max: int) -> Rates:
    """Normals/s, memory bandwidth and GEMM FLOP/s for every (D, C) in the run (and C = 1 for per-class pools)."""
    g = torch.Generator().manual_seed(0)
    n = 1 << 24
    normals = n / best_time(lambda: torch.randn(n, generator=g))
    read_bw, copy_bw = measure_bandwidth()
    gemm = {}
    rows = min(m_max, 8192)
    for d in dims:
        a = torch.randn(rows, d, generator=g)
        for c in sorted({1, *classes}):
            b = torch.randn(d, c, generator=g)
            gemm[d, c] = 2 * rows * d * c / best_time(lambda a=a, b=b: a @ b)
    return Rates(normals, read_bw, copy_bw, gemm)


def class_stats(num_classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic class statistics (C, D): mean ~ N(0, 1), std ~ U(0.5, 1.5), skewness ~ N(0, 0.5^2)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(num_classes, dim, generator=g)
    std = torch.rand(num_classes, dim, generator=g) + 0.5
    skew = 0.5 * torch.randn(num_classes, dim, generator=g)
    return mean, std, skew


def brute_force_class(mu: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor, ipc: int, m: int, seed: int,
                      pool: int, batch: int) -> int:
    """The paper's search for one class: index of the best of m candidate groups drawn in batches from ``pool``."""
    l_mu, l_sigma, l_gamma = WEIGHTS
    best_loss, best_index = float("inf"), -1
    for start in range(0, m, batch):
        count = min(batch, m - start)
        x = mu + sigma * draw_candidates(seed, pool, start, count, ipc, mu.numel())  # (count, ipc, D)
        mean = x.mean(dim=1)
        std = x.std(dim=1, unbiased=True)
        d = x - mean[:, None, :]
        skew = (d**3).mean(dim=1) / (d**2).mean(dim=1).pow(1.5)
        loss = (l_mu * (mean - mu).norm(dim=1) + l_sigma * (std - sigma).norm(dim=1)
                + l_gamma * (skew - gamma).norm(dim=1))
        value, idx = loss.min(dim=0)
        if float(value) < best_loss:
            best_loss, best_index = float(value), start + int(idx)
    return best_index


def reference_loss(mu: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor, ipc: int, seed: int, pool: int,
                   index: int) -> float:
    """Float64 loss of candidate ``index`` of ``pool`` for one class."""
    start = (index // DRAW_BLOCK) * DRAW_BLOCK
    z = draw_candidates(seed, pool, start, DRAW_BLOCK, ipc, mu.numel())[index - start]
    return float(group_loss_reference((mu + sigma * z)[None], mu.double(), sigma.double(), gamma.double(), WEIGHTS))


def is_tie(stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], c: int, ipc: int, seed: int, pool: int, a: int,
           b: int) -> bool:
    """Whether candidates a and b of ``pool`` have the same float64 loss for class c, to TIE_RTOL."""
    mean, std, skew = (s[c] for s in stats)
    la = reference_loss(mean, std, skew, ipc, seed, pool, a)
    lb = reference_loss(mean, std, skew, ipc, seed, pool, b)
    return abs(la - lb) <= TIE_RTOL * max(la, lb)


def measure_per_class(stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], ipc: int, m: int, seed: int,
                      batch: int, chunk: int) -> PerClass:
    """Brute force and d3hr with per-class pools on all classes of ``stats``; class c draws pool c in both."""
    mean, std, skew = stats
    t = len(mean)
    brute, brute_s = timed(lambda: [brute_force_class(mean[c], std[c], skew[c], ipc, m, seed, c, batch)
                                    for c in range(t)])
    sel, pools_s = timed(lambda: select_groups(mean, std, skew, ipc, m, WEIGHTS, seed, pools=None, chunk=chunk))
    pools_index = sel.index.tolist()
    ties = sum(is_tie(stats, c, ipc, seed, c, b, p) for c, (b, p) in enumerate(zip(brute, pools_index)) if b != p)
    return PerClass(brute_s / t, pools_s / t, brute, pools_index, ties)


def bound_per_class(m: int, ipc: int, dim: int, num_classes: int, rates: Rates) -> float:
    """Seconds per class for drawing, scoring and one pass over a pool of m candidates shared by C classes."""
    n = m * ipc * dim
    seconds = n / rates.normals + 3 * 2 * m * dim * num_classes / rates.gemm[dim, num_classes] + 4 * n / rates.bandwidth
    return seconds / num_classes


def check_text(pc: PerClass, shared_same: bool, shared_tie: bool) -> str:
    """PASS/FAIL with the number of identical choices (and float ties) against each d3hr mode."""
    same = sum(b == p for b, p in zip(pc.brute_index, pc.pools_index))
    t = len(pc.brute_index)
    ok = same + pc.ties == t and (shared_same or shared_tie)
    own_tie = f" +{pc.ties} tie" if pc.ties else ""
    shared = "1/1" if shared_same else "0/1 +1 tie" if shared_tie else "0/1"
    return f"{'PASS' if ok else 'FAIL'} own {same}/{t}{own_tie}, shared c0 {shared}"


def parse_args() -> argparse.Namespace:
    """Flags, with --quick or the full-size configuration filling those not given."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"smoke configuration {QUICK} (explicit flags still win)")
    p.add_argument("--dims", type=int, nargs="+", help=f"latent dimensions D (default {FULL['dims']})")
    p.add_argument("--ipc", type=int, nargs="+", help=f"images per class (default {FULL['ipc']})")
    p.add_argument("--m", type=int, nargs="+", help=f"candidates per class, e.g. 10000 100000 (default {FULL['m']})")
    p.add_argument("--classes", type=int, nargs="+", help=f"class counts C (default {FULL['classes']})")
    p.add_argument("--time-classes", type=int,
                   help=f"classes timed for brute force and per-class pools (default {FULL['time_classes']})")
    p.add_argument("--batch", type=int, default=1024, help="brute-force batch, a multiple of 64 (default 1024)")
    p.add_argument("--chunk", type=int, default=1024, help="d3hr select_groups chunk (default 1024, as in config)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.time_classes < 1:
        p.error("--time-classes must be >= 1")
    if args.batch % DRAW_BLOCK:
        p.error(f"--batch must be a multiple of {DRAW_BLOCK} (draw_candidates starts on block boundaries)")
    return args


def main() -> None:
    """Measure the rates, then every configuration, printing one table row per (D, IPC, m, C)."""
    args = parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; weights {WEIGHTS}; seed {args.seed}; "
          f"brute batch {args.batch}, d3hr chunk {args.chunk}")
    rates = measure_rates(args.dims, args.classes, max(args.m))
    print(f"normals/s (torch.randn, generator, 2^24): {rates.normals:.3e}")
    print(f"memory GB/s: sum {rates.read_bw / 1e9:.2f}, copy {rates.copy_bw / 1e9:.2f} (bound uses "
          f"{rates.bandwidth / 1e9:.2f})")
    rows = min(max(args.m), 8192)
    for (d, c), r in sorted(rates.gemm.items()):
        print(f"float32 GEMM ({rows} x {d}) @ ({d} x {c}): {r / 1e9:.2f} GFLOP/s")

    header = (f"{'config':<30} {'brute':>9} {'d3hr own':>9} {'d3hr shr':>9} {'bnd own':>9} {'bnd shr':>9} "
              f"{'brt/own':>8} {'brt/shr':>8} {'own/bnd':>8} {'shr/bnd':>8}  same-choice check")
    failed = False
    t = min(args.time_classes, min(args.classes))
    print(f"\nseconds per class; brute and 'own' (per-class pools) timed on the first {t} classes; 'shr' = one pool "
          f"shared by all C classes; 'bnd' = lower bound from the rates above")
    print(header)
    for dim in args.dims:
        stats_all = class_stats(max(args.classes), dim, args.seed)
        for ipc in args.ipc:
            for m in args.m:
                pc = measure_per_class(tuple(s[:t] for s in stats_all), ipc, m, args.seed, args.batch, args.chunk)
                for num_classes in args.classes:
                    mean, std, skew = (s[:num_classes] for s in stats_all)
                    sel, shared_s = timed(lambda mean=mean, std=std, skew=skew, ipc=ipc, m=m: select_groups(
                        mean, std, skew, ipc, m, WEIGHTS, args.seed, pools=1, chunk=args.chunk))
                    shared = shared_s / num_classes
                    bnd_own = bound_per_class(m, ipc, dim, 1, rates)
                    bnd_shr = bound_per_class(m, ipc, dim, num_classes, rates)
                    b0, s0 = pc.brute_index[0], int(sel.index[0])
                    check = check_text(pc, b0 == s0, b0 != s0 and is_tie(stats_all, 0, ipc, args.seed, 0, b0, s0))
                    failed |= check.startswith("FAIL")
                    line = (f"{f'D={dim} ipc={ipc} m={m} C={num_classes}':<30} {pc.brute_s:9.3g} {pc.pools_s:9.3g} "
                            f"{shared:9.3g} {bnd_own:9.3g} {bnd_shr:9.3g} {pc.brute_s / pc.pools_s:8.2f} "
                            f"{pc.brute_s / shared:8.1f} {pc.pools_s / bnd_own:8.2f} {shared / bnd_shr:8.2f}  {check}")
                    print(line, flush=True)
    print("overall:", "FAIL" if failed else "PASS")


if __name__ == "__main__":
    main()
