"""Group sampling (D3HR, Sec. 4.3): keep, per class, the candidate group whose moments best match the class.

For class c with per-dimension mean mu, std sigma and skewness gamma, a candidate group is x = mu + sigma * z with
z (ipc, D) ~ N(0, I). Its loss is

    L = l_mu ||mean(x) - mu||_2 + l_sigma ||std(x) - sigma||_2 + l_gamma ||skew(x) - gamma||_2.

Since mean(x) - mu = sigma * mean(z), std(x) - sigma = sigma * (std(z) - 1) and skew(x) = skew(z), the statistics
of z score every class at once:  ||sigma * a||^2 = (a^2) @ (sigma^2)  and
||g - gamma||^2 = |g|^2 - 2 g @ gamma + |gamma|^2, so a chunk of m candidates against C classes is three
(m x D) @ (D x C) products. Candidates are drawn in fixed blocks from seeds derived from (seed, pool, block), so the
choice does not depend on the chunk size or on how classes are spread over processes.

With correlated class models (stats.covariance full or lowrank:R, d3hr.distillation.covariance) the class is
x = mu + L z and the same scoring runs on z itself with mu = 0, sigma = 1 and gamma the class skewness in the
whitened coordinates L^-1 (x - mu); the select stage colours the chosen z.

On the CPU the cost is the draw plus the three products: each draw block's statistics are computed at once, in
cache-sized slices, so the candidates stream through memory about once; m2^1.5 is sqrt(m2) * m2 (correctly rounded
operations), so the statistics have the same bits whatever the slice, block, chunk or process split.

Skewness of a group (n = IPC members): ``biased`` (the default, and what every run so far used) is the Fisher-Pearson
coefficient g1 = m3 / m2^1.5 with biased central moments; ``adjusted`` is the sample-size-adjusted estimator
G1 = g1 * sqrt(n (n - 1)) / (n - 2) (Joanes & Gill, 1998), defined as 0 for n <= 2 (two points are always symmetric:
g1 = 0, and G1's factor is undefined). The class skewness gamma comes from thousands of samples, where both agree.
The authors' code (lin-zhao-resoLve/D3HR, generation/group_sampling.py, ``skewness_batch``) scores another quantity:
with samples (trials, n, D) it standardises each dimension by the group's mean and unbiased std, then sums the cubes
over the D dimensions with G1's factor n / ((n - 1)(n - 2)) taken at n = D, giving one number per group member, and
penalises its norm against 0 (not against the class's gamma) with weight 0.1; the paper's loss (and this module)
matches the per-dimension group skewness to gamma with weight 0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from d3hr.utils.seeding import generator_for

DRAW_BLOCK = 64  # candidates drawn per seeded generator call
DRAWS = "z = randn(64, ipc, D) per block, generator seeded by sha256('seed:pool:p:block:b')"  # in a selection
SKEWNESS = ("biased", "adjusted")
SLICE_ELEMENTS = 1 << 17  # numbers per slice in group_z_stats on the CPU: 512 KB of float32, three live buffers fit L2


@dataclass
class Selection:
    """Chosen groups: x (C, ipc, D) in the inverted domain, and which candidate of which pool each came from."""

    x: torch.Tensor  # (C, ipc, D) float32
    index: torch.Tensor  # (C,) int64 candidate index within the pool
    pool: torch.Tensor  # (C,) int64 pool each class drew from
    loss: torch.Tensor  # (C,) float32 loss of the chosen group
    loss_first: torch.Tensor  # (C,) float32 loss of candidate 0 (the Base-RS group), for reference


def skew_factor(ipc: int, skewness: str = "biased") -> float:
    """What g1 is multiplied by: 1 (biased); sqrt(n (n - 1)) / (n - 2) (adjusted, n = ipc >= 3), else 0."""
    if skewness not in SKEWNESS:
        raise ValueError(f"skewness must be one of {SKEWNESS}, got {skewness!r}")
    if skewness == "biased":
        return 1.0
    return (ipc * (ipc - 1)) ** 0.5 / (ipc - 2) if ipc > 2 else 0.0


def group_z_stats(z: torch.Tensor, work: tuple[torch.Tensor, torch.Tensor] | None = None,
                  out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, skewness: str = "biased",
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-dimension statistics of standard-normal groups z (m, ipc, D).

    Returns mean(z), std(z) - 1 (unbiased std) and skew(z) (``skewness``: biased g1 or adjusted G1, see the module
    notes), each (m, D). With ipc = 1 the std and skewness are undefined and returned as zeros (only the mean term
    can score a single image).

    The candidates are taken a few at a time (about SLICE_ELEMENTS numbers), so that the five passes over each
    slice stay in the core's cache instead of streaming the whole chunk through memory five times; every candidate
    gets the same arithmetic as in one pass, bit for bit. ``work``: two buffers of at least one slice, reused across
    calls (see ``stats_work``); ``out``: three (m, D) tensors to write into.
    """
    m, ipc, dim = z.shape
    if out is None:
        out = (z.new_empty(m, dim), z.new_empty(m, dim), z.new_empty(m, dim))
    zbar, zstd1, zskew = out
    if ipc == 1:
        zbar.copy_(z[:, 0])
        zstd1.zero_()
        zskew.zero_()
        return zbar, zstd1, zskew
    rows = min(m, slice_rows(ipc, dim, z.device))
    if work is None or work[0].numel() < rows * ipc * dim:
        work = stats_work(ipc, dim, z.device, rows)
    tiny = torch.finfo(z.dtype).tiny
    factor = skew_factor(ipc, skewness)
    for i in range(0, m, rows):
        zs = z[i : i + rows]  # (n, ipc, D), n <= rows
        n = len(zs)
        mean = torch.mean(zs, dim=1, out=zbar[i : i + n])  # (n, D)
        d = torch.sub(zs, mean[:, None, :], out=work[0][: n * ipc * dim].view(n, ipc, dim))
        d2 = torch.mul(d, d, out=work[1][: n * ipc * dim].view(n, ipc, dim))
        m2 = torch.mean(d2, dim=1, out=zstd1[i : i + n])
        m3 = torch.mean(d2.mul_(d), dim=1, out=zskew[i : i + n])  # d^3
        m2c = m2.clamp_min(tiny)
        torch.div(m3, m2c.sqrt().mul_(m2c), out=m3)  # m2^1.5 from correctly rounded ops: the same bits at any shape
        torch.mul(m2, ipc / (ipc - 1), out=m2).sqrt_().sub_(1.0)
        if factor != 1.0:
            m3.mul_(factor)
    return zbar, zstd1, zskew


def slice_rows(ipc: int, dim: int, device: torch.device | str = "cpu") -> int:
    """Candidates per slice of ``group_z_stats`` for groups of shape (ipc, D): cache-sized on the CPU, a whole draw
    block on an accelerator (where each slice costs kernel launches and there is no small cache to stay in)."""
    if torch.device(device).type != "cpu":
        return DRAW_BLOCK
    return max(1, SLICE_ELEMENTS // (ipc * dim))


def stats_work(ipc: int, dim: int, device: torch.device | str = "cpu",
               rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two flat scratch buffers ``group_z_stats`` needs for one slice (of ``rows`` candidates; default
    ``slice_rows``)."""
    n = (slice_rows(ipc, dim, device) if rows is None else rows) * ipc * dim
    return torch.empty(n, device=device), torch.empty(n, device=device)


def group_loss(zbar: torch.Tensor, zstd1: torch.Tensor, zskew: torch.Tensor, sigma: torch.Tensor,
               gamma: torch.Tensor, weights: tuple[float, float, float]) -> torch.Tensor:
    """Loss of m candidates for C classes as matrix products: z-stats (m, D), sigma and gamma (C, D) -> (m, C)."""
    l_mu, l_sigma, l_gamma = weights
    s2 = (sigma * sigma).T  # (D, C)
    loss = l_mu * ((zbar * zbar) @ s2).clamp_min(0).sqrt()
    loss = loss + l_sigma * ((zstd1 * zstd1) @ s2).clamp_min(0).sqrt()
    g2 = (zskew * zskew).sum(dim=1, keepdim=True) - 2.0 * zskew @ gamma.T + (gamma * gamma).sum(dim=1)[None, :]
    return loss + l_gamma * g2.clamp_min(0).sqrt()


def group_loss_reference(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor,
                         weights: tuple[float, float, float], skewness: str = "biased") -> torch.Tensor:
    """The paper's loss computed directly from groups x (m, ipc, D) of one class, in float64: (m,)."""
    x = x.to(torch.float64)
    m = x.mean(dim=1)
    s = x.std(dim=1, unbiased=True)
    d = x - m[:, None]
    g = (d**3).mean(dim=1) / (d**2).mean(dim=1).pow(1.5) * skew_factor(x.shape[1], skewness)
    l_mu, l_sigma, l_gamma = weights
    return (l_mu * (m - mu).norm(dim=1) + l_sigma * (s - sigma).norm(dim=1) + l_gamma * (g - gamma).norm(dim=1))


def draw_candidates(seed: int, pool: int, start: int, count: int, ipc: int, dim: int,
                    device: torch.device | str = "cpu", out: torch.Tensor | None = None) -> torch.Tensor:
    """Candidates [start, start + count) of a pool as z (count, ipc, D); ``start`` must be a multiple of DRAW_BLOCK.

    Drawn on ``device`` with its own generator: the same seed gives other numbers on CUDA than on the CPU. ``out``:
    a buffer of at least ``count`` rounded up to whole blocks, written in place (no fresh allocation)."""
    first = start // DRAW_BLOCK
    blocks = (count + DRAW_BLOCK - 1) // DRAW_BLOCK
    if out is None:
        out = torch.empty(blocks * DRAW_BLOCK, ipc, dim, device=device)
    for j in range(blocks):
        g = generator_for(seed, "pool", pool, "block", first + j, device=device)
        torch.randn(DRAW_BLOCK, ipc, dim, generator=g, out=out[j * DRAW_BLOCK : (j + 1) * DRAW_BLOCK])
    return out[:count]


def select_groups(mean: torch.Tensor, std: torch.Tensor, skew: torch.Tensor, ipc: int, candidates: int,
                  weights: tuple[float, float, float], seed: int, pools: int | None = None, chunk: int = 1024,
                  strategy: str = "group", progress: Callable[[int], None] | None = None,
                  pool_ids: Sequence[int] | None = None, device: torch.device | str = "cpu",
                  skewness: str = "biased") -> Selection:
    """Choose one group of ``ipc`` latents per class from class Gaussians (mean, std, skew: (C, D)).

    ``strategy='random'`` is Base-RS: candidate 0 of each class's pool, no search. ``pools`` = k shares k candidate
    pools among the classes (class c uses pool c mod k); None gives every class its own. ``progress`` is called with
    the number of classes finished. ``pool_ids`` restricts the work to those pools (one process's share): the
    classes of other pools are left at zero with an infinite loss. ``device``: where candidates are drawn and scored
    (CUDA draws differ from CPU draws for the same seed); results come back on the CPU. ``skewness``: the group
    skewness estimator, 'biased' (g1, the default every cached selection used) or 'adjusted' (G1).
    """
    num_classes, dim = mean.shape
    k = num_classes if pools is None else min(pools, num_classes)
    m = 1 if strategy == "random" else candidates
    chunk = max(DRAW_BLOCK, (chunk // DRAW_BLOCK) * DRAW_BLOCK)
    sigma, gamma = std.float().to(device), skew.float().to(device)
    best_loss = torch.full((num_classes,), float("inf"))
    best_index = torch.zeros(num_classes, dtype=torch.long)
    loss_first = torch.zeros(num_classes)
    best_z = torch.zeros(num_classes, ipc, dim)
    rows = min(chunk, (m + DRAW_BLOCK - 1) // DRAW_BLOCK * DRAW_BLOCK)
    # reused buffers (no page faults for fresh temporaries): the chunk's candidates and their statistics
    zbuf = torch.empty(rows, ipc, dim, device=device)
    stats = torch.empty(3, rows, dim, device=device)
    work = stats_work(ipc, dim, device)
    for p in range(k) if pool_ids is None else pool_ids:
        cls = torch.arange(p, num_classes, k)  # classes sharing pool p
        for start in range(0, m, chunk):
            count = min(chunk, m - start)
            for b in range(0, count, DRAW_BLOCK):  # statistics of each block while it is still in cache
                n = min(DRAW_BLOCK, count - b)
                zb = draw_candidates(seed, p, start + b, n, ipc, dim, device, out=zbuf[b:])  # (n, ipc, D)
                group_z_stats(zb, work, out=tuple(stats[:, b : b + n]), skewness=skewness)
            z = zbuf[:count]  # (count, ipc, D)
            loss = group_loss(*stats[:, :count], sigma[cls], gamma[cls], weights).cpu()  # (count, |cls|)
            if start == 0:
                loss_first[cls] = loss[0]
            value, idx = loss.min(dim=0)  # first minimum within the chunk
            better = value < best_loss[cls]
            if bool(better.any()):
                upd = cls[better]
                best_loss[upd] = value[better]
                best_index[upd] = idx[better] + start
                best_z[upd] = z[idx[better].to(z.device)].cpu()
        if progress is not None:
            progress(len(cls))
    return Selection(group_latents(mean, std, best_z), best_index, torch.arange(num_classes) % k, best_loss,
                     loss_first)


def group_latents(mean: torch.Tensor, std: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The latents x = mu + sigma * z (C, ipc, D) of chosen groups z (C, ipc, D), from mean and std (C, D): the one
    expression selection and regeneration (d3hr.distillation.unpack) both use, so that x has the same bits."""
    return mean.float()[:, None, :] + std.float()[:, None, :] * z


def chosen_candidates(seed: int, pool: torch.Tensor, index: torch.Tensor, ipc: int, dim: int) -> torch.Tensor:
    """Redraw candidate ``index[c]`` of pool ``pool[c]`` for every class c: z (C, ipc, D) on the CPU, the same
    numbers ``select_groups`` drew for it at any chunk size or process split. Only the draw blocks that hold the
    chosen candidates are drawn (DRAW_BLOCK candidates each, once however many classes chose from one), never the
    whole pool."""
    z = torch.empty(len(index), ipc, dim)
    block = torch.empty(DRAW_BLOCK, ipc, dim)
    users: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (pool, block start) -> [(class, candidate)]
    for c, (p, i) in enumerate(zip(pool.tolist(), index.tolist())):
        users.setdefault((p, i - i % DRAW_BLOCK), []).append((c, i))
    for (p, start), chosen in users.items():
        draw_candidates(seed, p, start, DRAW_BLOCK, ipc, dim, out=block)
        for c, i in chosen:
            z[c] = block[i - start]
    return z
