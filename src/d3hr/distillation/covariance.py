"""Class distributions with correlations between latent dimensions: stats.covariance = diag | full | lowrank:R.

D3HR models class c in the inverted domain as independent per-dimension Gaussians (DESIGN.md section 2): ``diag``,
the paper's, untouched here. With ``full`` or ``lowrank:R`` the class is x = mu + L z, z ~ N(0, I_D), with L a square
root of a covariance model Sigma = L L^T; group sampling (d3hr.distillation.group) scores candidate groups of z in
these whitened coordinates with its matrix products unchanged: target mean 0, std 1, and the class skewness of
w = L^-1 (x - mu) measured on the inverted latents (``skewness_white``).

Shrinkage toward the diagonal. S is the unbiased sample covariance of the class's n inverted latents;
Sigma_rho = (1 - rho) S + rho diag(S): every correlation times (1 - rho), every variance kept. ``auto`` takes rho
from the Oracle Approximating Shrinkage formula (Chen, Wiesel, Eldar & Hero 2010, IEEE Trans. Signal Process.
58(10), eq. 23) applied to the correlation matrix R = diag(S)^-1/2 S diag(S)^-1/2, whose OAS target
tr(R) / D * I = I is diag(S) back in covariance units:

    rho = min(1, ((1 - 2/D) tr(R^2) + tr(R)^2) / ((n + 1 - 2/D) (tr(R^2) - tr(R)^2 / D))),    tr(R) = D.

(OAS is derived for Gaussian data and the scaled-identity target; on standardised data it is the usual
approximation.) A number in [0, 1] fixes rho. For rho > 0 and positive variances Sigma_rho is positive definite
(the eigenvalues of its correlation matrix are >= rho), also when n <= D, where S itself is singular.

full: L = cholesky(Sigma_rho), stored as ``cov_factor`` (C, D, D) float32. The co-moments are streamed during
inversion (``CoMoments``: C x D x D float64, Chan et al. 1979 pairwise update, merged in batch order).

lowrank:R: Sigma_lr = U diag(s) U^T + diag(r), (U, s) the R leading eigenpairs of (1 - rho) S (principal
directions from a thin SVD of the centred latents) and r = diag(S) - diag(U diag(s) U^T) >= rho diag(S): the
leading directions of Sigma_rho with every variance exact. Stored as ``lowrank_u`` (C, D, R), ``lowrank_s`` (C, R),
``diag_rest`` (C, D), float32: C D (R + 1) + C R numbers. Its square root: with
V = diag(r)^-1/2 U diag(s)^1/2 = W diag(sqrt(lam)) Q^T (thin SVD, W (D, R) with orthonormal columns),

    Sigma_lr = diag(r)^1/2 (I + W diag(lam) W^T) diag(r)^1/2
    L = diag(r)^1/2 (I + W diag(sqrt(1 + lam) - 1) W^T),    L^-1 = (I + W diag(1/sqrt(1 + lam) - 1) W^T) diag(r)^-1/2,

the bracket's symmetric square root. So a member needs D normals as in diag and full (not R + D, as the
two-source form x = mu + U diag(sqrt(s)) a + sqrt(r) * b would, whose whitening is not square: its z cannot be
recovered from x, so the class skewness could not be measured in z), costs O(D R) and no D x D matrix is formed;
with no correlations (s = 0) L = diag(sqrt(r)) and x = mu + sigma * z as in diag.

Whitened skewness. The skewness of w = L^-1 (x - mu) needs L, known only after the last image: inversion keeps
the inverted latents on rank 0 (n_c x D float32 per class and level, ``JointStream``) and measures it at the end.
When they would exceed MEMORY_BUDGET (ImageNet: D = 4096, 1000 classes, 1,250+ images a class at IPC 50 under the
default rule, 20 GB) only the first ``stats.kept_per_class`` of each class in the seeded visiting order are kept
(by default the most that fit: 524 a class there), a random subsample on which lowrank's directions and the
whitened skewness are fitted; the streamed moments and full's co-moments still see every image. ``check_fits``
refuses, before any inversion, full co-moments over the budget and an explicit cap that does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from d3hr.config import covariance_form, shrinkage_value
from d3hr.distillation.moments import Moments
from d3hr.errors import D3HRError

MEMORY_BUDGET = 8 * 2**30  # bytes of kept latents and co-moments inversion may hold for stats.covariance != diag
NOT_PD = 1e-12  # a diagonal remainder at or below this share of its variance counts as not positive definite


def form_name(form: str, rank: int | None) -> str:
    """The stats.covariance spelling: 'diag', 'full', 'lowrank:R'."""
    return f"lowrank:{rank}" if form == "lowrank" else form


def storage_bytes(form: str, rank: int | None, dim: int, num_classes: int) -> int:
    """Bytes (float32) of what sampling reads per form: mean, std, skewness (diag); mean, cov_factor,
    skewness_white (full); mean, lowrank_u, lowrank_s, diag_rest, skewness_white (lowrank)."""
    per_class = {"diag": 3 * dim, "full": dim * dim + 2 * dim,
                 "lowrank": dim * (rank or 0) + (rank or 0) + 3 * dim}[form]
    return 4 * num_classes * per_class


def check_fits(text: str, dim: int, num_classes: int, images: int, levels: int,
               kept_per_class: int | str = "auto") -> int | None:
    """Before inversion: refuse R >= D and full co-moments over MEMORY_BUDGET (C x D x D float64 per level), and
    return the cap on the inverted latents kept per class (images x D float32 per level), None for all of them.

    ``kept_per_class`` auto keeps every latent while they fit the budget (``images`` is the most the inversion plan
    can visit) and otherwise the most per class that fits: the class models are then fitted on the first that many
    images of each class in the plan's seeded visiting order (a random subsample; the streamed moments still see
    every image). An integer N caps at N per class and must itself fit. One-line errors naming the value."""
    form, rank = covariance_form(text)
    if form == "diag":
        return None
    if form == "lowrank" and rank >= dim:
        raise D3HRError(f"stats.covariance={text} needs R < D = {dim} (the latent's dimensions), got R = {rank}")
    gb = 2.0**30
    comoments = num_classes * dim * dim * 8 * levels if form == "full" else 0
    if comoments > MEMORY_BUDGET:
        raise D3HRError(f"stats.covariance=full streams {num_classes} x {dim} x {dim} float64 co-moments per level "
                        f"({comoments / gb:.1f} GB), over the {MEMORY_BUDGET / gb:.0f} GB budget; use "
                        "stats.covariance=lowrank:R")
    per_image = dim * 4 * levels
    fits = (MEMORY_BUDGET - comoments) // (per_image * num_classes)  # latents per class within the budget
    if kept_per_class != "auto":
        cap = int(kept_per_class)
        if comoments + min(images, cap * num_classes) * per_image > MEMORY_BUDGET:
            raise D3HRError(f"stats.kept_per_class={cap} keeps up to {cap * num_classes} latents of D = {dim} "
                            f"({(comoments + cap * num_classes * per_image) / gb:.1f} GB with the co-moments), "
                            f"over the {MEMORY_BUDGET / gb:.0f} GB budget: at most {fits} fit")
        return cap
    if comoments + images * per_image <= MEMORY_BUDGET:
        return None
    if fits < 2:
        raise D3HRError(f"stats.covariance={text}: not even 2 inverted latents per class of D = {dim} fit the "
                        f"{MEMORY_BUDGET / gb:.0f} GB budget for {num_classes} classes")
    return int(fits)


# ----- streaming co-moments ---------------------------------------------------------------------------------------
def _chan(na: torch.Tensor, mean_a: torch.Tensor, c2a: torch.Tensor, nb: torch.Tensor, mean_b: torch.Tensor,
          c2b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairwise update of (n (k,), mean (k, D), co-moment (k, D, D)) for two disjoint samples (Chan et al. 1979):
    C2 = C2_a + C2_b + delta delta^T n_a n_b / n with delta = mean_b - mean_a."""
    n = na + nb
    safe = n.clamp(min=1.0)
    delta = mean_b - mean_a  # (k, D)
    mean = mean_a + delta * (nb / safe)[:, None]
    c2 = c2a + c2b + delta[:, :, None] * delta[:, None, :] * (na * nb / safe)[:, None, None]
    return n, mean, c2


@dataclass
class CoMoments:
    """Per class c: count n, mean and co-moment matrix C2 = sum (x - mean)(x - mean)^T, float64."""

    n: torch.Tensor  # (C,)
    mean: torch.Tensor  # (C, D)
    c2: torch.Tensor  # (C, D, D)

    @classmethod
    def zeros(cls, num_classes: int, dim: int) -> CoMoments:
        f64 = torch.float64
        return cls(torch.zeros(num_classes, dtype=f64), torch.zeros(num_classes, dim, dtype=f64),
                   torch.zeros(num_classes, dim, dim, dtype=f64))

    @staticmethod
    def batch(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One batch's co-moments in compact form, the classes present only: (classes (k,), n (k,), mean (k, D),
        c2 (k, D, D)); x (B, ...) any float dtype, labels (B,)."""
        x = x.detach().to(torch.float64).reshape(len(x), -1).cpu()
        labels = labels.to(torch.long).cpu()
        classes = labels.unique()  # sorted
        rows = [x[labels == c] for c in classes.tolist()]
        mean = torch.stack([r.mean(dim=0) for r in rows]) if rows else x.new_zeros(0, x.shape[1])
        c2 = [(r - m).T @ (r - m) for r, m in zip(rows, mean)]  # (D, D) each
        c2t = torch.stack([(c + c.T) / 2 for c in c2]) if c2 else x.new_zeros(0, x.shape[1], x.shape[1])
        return classes, torch.tensor([float(len(r)) for r in rows], dtype=torch.float64), mean, c2t

    @classmethod
    def from_batch(cls, x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> CoMoments:
        """Dense co-moments of one batch."""
        out = cls.zeros(num_classes, x[0].numel())
        out.update(cls.batch(x, labels))
        return out

    def update(self, part: tuple[torch.Tensor, ...]) -> None:
        """Merge a compact part (``batch``) into these co-moments in place: only its classes' rows change."""
        idx, nb, mean_b, c2b = part
        n, mean, c2 = _chan(self.n[idx], self.mean[idx], self.c2[idx], nb, mean_b, c2b)
        self.n[idx], self.mean[idx], self.c2[idx] = n, mean, c2

    def merge(self, other: CoMoments) -> CoMoments:
        """Both samples' co-moments (the same arithmetic as ``update``, for every class)."""
        return CoMoments(*_chan(self.n, self.mean, self.c2, other.n, other.mean, other.c2))

    def cov(self, c: int) -> torch.Tensor:
        """Unbiased covariance of class c, (D, D)."""
        return self.c2[c] / (self.n[c] - 1.0)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.n": self.n, f"{prefix}.mean": self.mean, f"{prefix}.c2": self.c2}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> CoMoments:
        return cls(*(tensors[f"{prefix}.{k}"].to(torch.float64) for k in ("n", "mean", "c2")))


# ----- shrinkage and the two models ---------------------------------------------------------------------------------
def oas_shrinkage(corr_fro2: float, dim: int, n: int) -> float:
    """rho of OAS on a correlation matrix R (module docstring) from tr(R^2) = ||R||_F^2, D and n."""
    num = (1.0 - 2.0 / dim) * corr_fro2 + dim * dim
    den = (n + 1.0 - 2.0 / dim) * (corr_fro2 - dim)
    return 1.0 if den <= 0 else min(1.0, num / den)


def _rho(shrinkage: float | None, corr_fro2: float, dim: int, n: int) -> float:
    return oas_shrinkage(corr_fro2, dim, n) if shrinkage is None else shrinkage


def _not_pd(name: str, rho: float, n: int, dim: int, why: str) -> D3HRError:
    return D3HRError(f"class '{name}': covariance not positive definite after shrinkage {rho:.4g} ({why}; "
                     f"n = {n} images, D = {dim}); use stats.shrinkage=auto or a value in (0, 1]")


def _variances(var: torch.Tensor, name: str, n: int) -> None:
    """A one-line error naming the class when some dimension's variance is not positive: no shrinkage toward the
    diagonal can make its covariance positive definite."""
    bad = (~(var > 0)).nonzero()
    if len(bad):
        d = int(bad[0])
        raise D3HRError(f"class '{name}': covariance not positive definite at any shrinkage (dimension {d} has "
                        f"variance {float(var[d]):.3g}; n = {n} images)")


def full_model(cov: torch.Tensor, n: int, shrinkage: float | None, name: str) -> tuple[torch.Tensor, float]:
    """The Cholesky factor L (D, D) float64 of (1 - rho) S + rho diag(S) for S = ``cov`` (D, D) from n images,
    and rho (``shrinkage``, or the OAS rule when None); a one-line error naming the class when it is not positive
    definite."""
    cov = cov.to(torch.float64)
    var = cov.diagonal()
    dim = len(var)
    _variances(var, name, n)
    scale = var.rsqrt()
    rho = _rho(shrinkage, float(((cov * scale[:, None] * scale[None, :]) ** 2).sum()), dim, n)
    sigma = cov * (1.0 - rho)
    sigma.diagonal().copy_(var)  # the variances exactly
    chol, info = torch.linalg.cholesky_ex(sigma)
    if int(info) != 0:
        raise _not_pd(name, rho, n, dim, f"Cholesky fails at dimension {int(info) - 1}")
    return chol, rho


def lowrank_model(x: torch.Tensor, rank: int, shrinkage: float | None, name: str
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """U (D, R), s (R,), r (D,) float64 and rho (``shrinkage``, or the OAS rule when None) of the low-rank model
    (module docstring) from a class's latents x (n, D); a one-line error naming the class when the model is not
    positive definite. When min(n, D) < R the missing directions get s = 0 and U = 0 (the centred sample's rank is
    at most n - 1 anyway)."""
    x = x.to(torch.float64)
    n, dim = x.shape
    xc = x - x.mean(dim=0)
    var = (xc * xc).sum(dim=0) / (n - 1)  # (D,) diag(S)
    _variances(var, name, n)
    y = xc * (var * (n - 1)).rsqrt()  # R = y^T y
    gram = y @ y.T if n < dim else y.T @ y  # same nonzero spectrum: ||R||_F^2 = ||gram||_F^2
    rho = _rho(shrinkage, float((gram * gram).sum()), dim, n)
    _, sv, vh = torch.linalg.svd(xc, full_matrices=False)  # sv (k,), vh (k, D), k = min(n, D)
    k = min(rank, len(sv))
    u = x.new_zeros(dim, rank)
    s = x.new_zeros(rank)
    u[:, :k] = vh[:k].T
    s[:k] = (1.0 - rho) * sv[:k] ** 2 / (n - 1)
    rest = var - (u * u * s).sum(dim=1)
    bad = (rest <= NOT_PD * var).nonzero()
    if len(bad):
        d = int(bad[0])
        raise _not_pd(name, rho, n, dim, f"diagonal remainder {float(rest[d]):.3g} in dimension {d}, "
                      f"{len(bad)} dimension(s) in all, with R = {rank}")
    return u, s, rest, rho


@dataclass(frozen=True)
class ClassRoot:
    """A square root L of each class's covariance model, x - mu = L z: the Cholesky factor (full) or the low-rank
    root of the module docstring (lowrank: scale = sqrt(r), w = W, gain = sqrt(1 + lam) - 1)."""

    form: str
    chol: torch.Tensor | None = None  # (C, D, D) full
    scale: torch.Tensor | None = None  # (C, D) lowrank
    w: torch.Tensor | None = None  # (C, D, R)
    lam: torch.Tensor | None = None  # (C, R)

    @classmethod
    def full(cls, chol: torch.Tensor) -> ClassRoot:
        return cls("full", chol=chol)

    @classmethod
    def lowrank(cls, u: torch.Tensor, s: torch.Tensor, rest: torch.Tensor) -> ClassRoot:
        """From U (C, D, R), s (C, R), r (C, D): V = diag(r)^-1/2 U diag(s)^1/2 = W diag(sqrt(lam)) Q^T."""
        scale = rest.sqrt()
        v = u * s.clamp_min(0).sqrt()[:, None, :] / scale[:, :, None]  # (C, D, R)
        w, sv, _ = torch.linalg.svd(v, full_matrices=False)  # w (C, D, R), sv (C, R)
        return cls("lowrank", scale=scale, w=w, lam=sv * sv)

    def color(self, z: torch.Tensor) -> torch.Tensor:
        """L z for z (C, m, D) -> (C, m, D)."""
        if self.form == "full":
            return z @ self.chol.transpose(1, 2)
        gain = (1.0 + self.lam).sqrt() - 1.0  # (C, R)
        t = z + ((z @ self.w) * gain[:, None, :]) @ self.w.transpose(1, 2)
        return t * self.scale[:, None, :]

    def whiten(self, dx: torch.Tensor) -> torch.Tensor:
        """L^-1 dx for dx = x - mu (C, m, D) -> (C, m, D)."""
        if self.form == "full":
            return torch.linalg.solve_triangular(self.chol, dx.transpose(1, 2), upper=False).transpose(1, 2)
        gain = (1.0 + self.lam).rsqrt() - 1.0
        t = dx / self.scale[:, None, :]
        return t + ((t @ self.w) * gain[:, None, :]) @ self.w.transpose(1, 2)


def read_root(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> ClassRoot | None:
    """The class roots stats.safetensors holds, or None for diag (also for statistics written before
    stats.covariance existed); one-line errors naming the class for a factor that is not positive definite."""
    text = meta.get("covariance", "diag")
    form, rank = covariance_form(text)
    if form == "diag":
        return None
    classes = meta["classes"]
    need = ("cov_factor",) if form == "full" else ("lowrank_u", "lowrank_s", "diag_rest")
    for name in (*need, "skewness_white"):
        if name not in tensors:
            raise D3HRError(f"stats.safetensors: covariance {text} without its tensor {name!r}")
        t = tensors[name]
        if not torch.isfinite(t).all():
            c = int((~torch.isfinite(t.flatten(1))).any(dim=1).nonzero()[0])
            raise D3HRError(f"stats.safetensors: non-finite {name} for class '{classes[c]}'")
    if form == "full":
        chol = tensors["cov_factor"].float()
        bad = (chol.diagonal(dim1=1, dim2=2) <= 0).any(dim=1).nonzero()
        if len(bad):
            raise D3HRError(f"stats.safetensors: cov_factor of class '{classes[int(bad[0])]}' is not the Cholesky "
                            "factor of a positive definite covariance")
        return ClassRoot.full(chol)
    u, s, rest = tensors["lowrank_u"].float(), tensors["lowrank_s"].float(), tensors["diag_rest"].float()
    dim = u.shape[1]
    if u.shape[2] != rank or rank >= dim:
        raise D3HRError(f"stats.safetensors: covariance {text} needs R < D = {dim}, and lowrank_u has R = "
                        f"{u.shape[2]}")
    bad = ((rest <= 0).any(dim=1) | (s < 0).any(dim=1)).nonzero()
    if len(bad):
        raise D3HRError(f"stats.safetensors: the low-rank covariance of class '{classes[int(bad[0])]}' is not "
                        "positive definite")
    return ClassRoot.lowrank(u, s, rest)


# ----- what inversion streams, and the fit at its end --------------------------------------------------------------
@dataclass
class JointStream:
    """What inversion accumulates for stats.covariance != diag, per streamed level: the co-moments (full) and the
    inverted latents, kept in batch order on rank 0 for the whitened skewness (and lowrank's principal directions)."""

    form: str
    dim: int
    comoments: dict[int, CoMoments]  # level -> (C, D, D); full only
    labels: list[torch.Tensor]  # per batch (B,) int64, the kept latents' classes
    latents: dict[int, list[torch.Tensor]]  # level -> per batch (B', D) float32, the kept ones
    cap: int | None  # at most this many latents kept per class (check_fits), the first in batch order; None: all
    counts: torch.Tensor  # (C,) int64 latents kept so far per class (read only under a cap)

    @classmethod
    def start(cls, text: str, levels: list[int], num_classes: int, dim: int, cap: int | None = None) -> JointStream:
        form, _ = covariance_form(text)
        cm = {k: CoMoments.zeros(num_classes, dim) for k in levels} if form == "full" else {}
        return cls(form, dim, cm, [], {k: [] for k in levels}, cap, torch.zeros(num_classes, dtype=torch.long))

    @staticmethod
    def batch(form: str, labels: torch.Tensor, zk: list[torch.Tensor]) -> tuple[Any, ...]:
        """One batch's share, computed where it was inverted: labels (B,), per level the latents (B, D) float32
        and (full) the co-moments' compact form."""
        flat = [z.detach().flatten(1).float().cpu() for z in zk]
        parts = [CoMoments.batch(z, labels) for z in flat] if form == "full" else []
        return labels.to(torch.long).cpu(), flat, parts

    def add(self, part: tuple[Any, ...]) -> None:
        """Fold in one batch's share (call in batch order)."""
        labels, flat, parts = part
        keep = self._keep(labels)
        self.labels.append(labels[keep])
        for k, z in zip(self.latents, flat):
            self.latents[k].append(z[keep])
        for k, p in zip(self.comoments, parts):
            self.comoments[k].update(p)

    def _keep(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,) bool: which of a batch's latents are kept (all without a cap; else while their class has fewer than
        ``cap``, counted in batch order, so the kept set does not depend on the batch size)."""
        if self.cap is None:
            return torch.ones_like(labels, dtype=torch.bool)
        onehot = torch.nn.functional.one_hot(labels, len(self.counts))  # (B, C)
        rank = (onehot.cumsum(dim=0) * onehot).sum(dim=1) - 1 + self.counts[labels]  # (B,) position in its class
        keep = rank < self.cap
        self.counts += onehot[keep].sum(dim=0)
        return keep

    def tensors(self) -> dict[str, torch.Tensor]:
        """For the partial file: ``kept.labels``, ``kept.zk{k}`` and (full) the co-moments ``cov{k}.*``."""
        out = {"kept.labels": torch.cat(self.labels) if self.labels else torch.zeros(0, dtype=torch.long)}
        for k, zs in self.latents.items():
            out[f"kept.zk{k}"] = torch.cat(zs) if zs else torch.zeros(0, self.dim)
        for k, cm in self.comoments.items():
            out.update(cm.tensors(f"cov{k}"))
        return out

    @classmethod
    def from_tensors(cls, text: str, levels: list[int], tensors: dict[str, torch.Tensor], num_classes: int,
                     cap: int | None = None) -> JointStream:
        form, _ = covariance_form(text)
        cm = {k: CoMoments.from_tensors(tensors, f"cov{k}") for k in levels} if form == "full" else {}
        dim = tensors[f"kept.zk{levels[0]}"].shape[1]
        labels = tensors["kept.labels"]
        counts = torch.bincount(labels, minlength=num_classes)
        return cls(form, dim, cm, [labels], {k: [tensors[f"kept.zk{k}"]] for k in levels}, cap, counts)

    def kept(self, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """labels (N,) and latents (N, D) float32 of the images inverted so far."""
        return torch.cat(self.labels), torch.cat(self.latents[level])


def fit(stream: JointStream, level: int, text: str, shrinkage: str, classes: list[str]
        ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The class models at ``level`` for stats.covariance ``text`` and stats.shrinkage ``shrinkage``: the tensors
    stats.safetensors adds (float32; module docstring) and the record stages.json keeps. One-line errors name the
    class whose covariance is not positive definite."""
    form, rank = covariance_form(text)
    rule = shrinkage_value(shrinkage)
    labels, z = stream.kept(level)
    dim, num_classes = z.shape[1], len(classes)
    rhos, skew_white, factors = [], torch.zeros(num_classes, dim), []
    for c, name in enumerate(classes):
        xc = z[labels == c].double()  # (n_c, D)
        n = len(xc)
        if n < 2:
            raise D3HRError(f"class '{name}': a covariance needs at least 2 inverted images, got {n}")
        if form == "full":
            chol, rho = full_model(stream.comoments[level].cov(c), n, rule, name)
            root, factor = ClassRoot.full(chol[None]), (chol,)
        else:
            u, s, rest, rho = lowrank_model(xc, rank, rule, name)
            root, factor = ClassRoot.lowrank(u[None], s[None], rest[None]), (u, s, rest)
        white = root.whiten((xc - xc.mean(dim=0))[None])[0]  # (n_c, D)
        skew_white[c] = Moments.from_batch(white, torch.zeros(n, dtype=torch.long), 1).skewness()[0].float()
        rhos.append(rho)
        factors.append(factor)
    stack = [torch.stack([f[i] for f in factors]).float() for i in range(len(factors[0]))]
    names = ("cov_factor",) if form == "full" else ("lowrank_u", "lowrank_s", "diag_rest")
    tensors = {**dict(zip(names, stack)), "skewness_white": skew_white,
               "shrinkage": torch.tensor(rhos, dtype=torch.float32)}
    rho_t = torch.tensor(rhos, dtype=torch.float64)
    record = {"covariance": text, "shrinkage": shrinkage, "rho_min": round(float(rho_t.min()), 4),
              "rho_mean": round(float(rho_t.mean()), 4), "rho_max": round(float(rho_t.max()), 4),
              "kept_images": len(labels), "kept_per_class": stream.cap,
              "storage_mb": round(storage_bytes(form, rank, dim, num_classes) / 1e6, 3)}
    return tensors, record
