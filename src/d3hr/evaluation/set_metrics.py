"""Set-quality metrics over feature vectors (pure functions): FID, precision / recall / density / coverage, diversity.

- FID (Heusel et al. 2017): ||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2)), with the Gaussians' means
  and covariances (ddof 1) estimated from the two sets. The trace of the matrix square root is computed in float64
  as the sum of the square roots of the eigenvalues of the symmetric PSD matrix S_r^(1/2) S_f S_r^(1/2), which has
  the eigenvalues of S_r S_f (``torch.linalg.eigh``, negative round-off clamped to 0). This is exact for singular
  covariances (fewer samples than dimensions), so no eps is added to the diagonals (pytorch-fid and torchmetrics add
  one when scipy's ``sqrtm`` of the non-symmetric product fails). Singular is the rule with a distilled set: FID of
  n samples is biased upwards roughly as 1/n (Chong & Forsyth 2020), so compare FIDs only at equal sample counts.
- precision, recall, density, coverage: the ``prdc`` package's definitions (Naeem et al. 2020,
  clovaai/generative-evaluation-prdc ``compute_prdc``): the k-NN radius of a point is the distance to its k-th
  nearest neighbour within its own set (itself excluded), and "inside" is a strict ``<``.
- diversity: the mean Euclidean distance over the distinct pairs of a set.

Distances are Euclidean, computed in float64 from centred features by blocks of rows (|a|^2 + |b|^2 - 2 a.b, BLAS:
an exact difference-based distance is ~7x slower); a squared distance within 1e-12 of |a|^2 + |b|^2 (round-off) is
taken as 0, so that duplicated rows are at distance exactly 0, and distances are then rounded to float32, so that a
distance computed twice (in another block, or as a radius) compares equal: a point exactly on a k-NN radius is then
outside it, as in ``prdc`` (a set compared with itself has density exactly 1 when no distances tie otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from d3hr.errors import D3HRError

K_DEFAULT = 5  # prdc's recommended k
BLOCK = 1024  # rows per block of a distance matrix
ZERO = 1e-12  # relative round-off below which a squared distance is 0


def _rows(x: torch.Tensor, name: str, at_least: int = 1) -> torch.Tensor:
    if x.dim() != 2 or len(x) < at_least:
        raise D3HRError(f"{name} must be (N, D) features with N >= {at_least}, got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64).cpu()


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and covariance (D, D, ddof 1) in float64 of features (N, D), N >= 2."""
    x = _rows(features, "features", 2)
    mu = x.mean(dim=0)  # (D,)
    xc = x - mu
    return mu, xc.T @ xc / (len(x) - 1)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2), exact for singular (PSD) covariances (float64)."""
    mu1, cov1, mu2, cov2 = (t.to(torch.float64) for t in (mu1, cov1, mu2, cov2))
    r1 = _psd_sqrt(cov1)
    m = r1 @ cov2 @ r1  # (D, D), symmetric PSD with the eigenvalues of cov1 @ cov2
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    d = mu1 - mu2
    return max(float(d @ d + cov1.trace() + cov2.trace() - 2 * tr_sqrt), 0.0)


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two sets of features (N, D) and (M, D), N, M >= 2 (see the module docstring for its bias)."""
    return frechet_distance(*gaussian_stats(_rows(real, "real", 2)), *gaussian_stats(_rows(fake, "fake", 2)))


def _distance_blocks(a: torch.Tensor, b: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, Euclidean distances (<= BLOCK, M)) from the rows of a (N, D) to all rows of b (M, D)."""
    nb = (b * b).sum(dim=1)  # (M,)
    for i in range(0, len(a), BLOCK):
        ai = a[i : i + BLOCK]
        na = (ai * ai).sum(dim=1, keepdim=True)  # (n, 1)
        d2 = na + nb - 2 * ai @ b.T  # (n, M)
        d2 = torch.where(d2 <= ZERO * (na + nb), torch.zeros_like(d2), d2)
        yield i, d2.sqrt().float()


def _centred(*sets: torch.Tensor) -> list[torch.Tensor]:
    center = sets[0].mean(dim=0)
    return [s - center for s in sets]


def knn_radii(features: torch.Tensor, k: int = K_DEFAULT) -> torch.Tensor:
    """Distance (N,) from each row to its k-th nearest other row of ``features`` (N, D); N must exceed k."""
    x = _rows(features, "features")
    if not 1 <= k < len(x):
        raise D3HRError(f"k-NN radii with k={k} need at least {k + 1} feature vectors, got {len(x)}")
    (x,) = _centred(x)
    return _radii(x, k)


def _radii(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.cat([d.topk(k + 1, dim=1, largest=False).values[:, k] for _, d in _distance_blocks(x, x)])


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = K_DEFAULT) -> dict[str, float | None]:
    """Precision, recall, density and coverage of ``fake`` (M, D) against ``real`` (N, D), as ``prdc.compute_prdc``.

    precision: share of fake points inside some real point's k-NN ball; recall: share of real points inside some fake
    point's k-NN ball; density: (1/k) x mean over fake points of the number of real balls containing it; coverage:
    share of real points whose own ball contains a fake point. N must exceed k (else a one-line error); recall needs
    the fake points' own radii and is None when M <= k.
    """
    r, f = _rows(real, "real"), _rows(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise D3HRError(f"real and fake features differ in dimension: {r.shape[1]} vs {f.shape[1]}")
    if not 1 <= k < len(r):
        raise D3HRError(f"prdc with k={k} needs at least {k + 1} real feature vectors, got {len(r)}")
    r, f = _centred(r, f)
    r_radii = _radii(r, k)  # (N,)
    f_radii = _radii(f, k) if len(f) > k else None  # (M,)
    inside_any = torch.zeros(len(f), dtype=torch.bool)  # fake j in some real ball
    inside_count = torch.zeros(len(f), dtype=torch.float64)  # real balls holding fake j
    recalled = covered = 0
    for i, d in _distance_blocks(r, f):  # d: (n, M) real rows i.. to every fake
        inside = d < r_radii[i : i + len(d), None]  # (n, M)
        inside_any |= inside.any(dim=0)
        inside_count += inside.sum(dim=0)
        covered += int(inside.any(dim=1).sum())
        if f_radii is not None:
            recalled += int((d < f_radii[None, :]).any(dim=1).sum())
    return {"precision": float(inside_any.double().mean()),
            "recall": recalled / len(r) if f_radii is not None else None,
            "density": float(inside_count.mean()) / k, "coverage": covered / len(r)}


def diversity(features: torch.Tensor) -> float:
    """Mean Euclidean distance over the N (N - 1) / 2 distinct pairs of rows of ``features`` (N, D), N >= 2."""
    (x,) = _centred(_rows(features, "features", 2))
    total = sum(float(d.double().sum()) for _, d in _distance_blocks(x, x))  # every pair twice, the diagonal 0
    return total / (len(x) * (len(x) - 1))
