"""Baselines of the evaluation table (DESIGN.md section 4), as pure functions the select stage calls per class.

- random-real: ``ipc`` real training images per class, drawn uniformly without replacement.
- herding: greedy herding (Welling 2009, as in iCaRL and the DC benchmark) on features of a fixed network: each step
  adds the image that brings the mean of the chosen features closest to the class mean (d3hr-herd herds generated
  images toward the real class mean with the same function).
- kmeans-latent: k-means (k = ipc) on the VAE latents of a class; the centroids are decoded (D4M without Stable
  Diffusion).
- base-ddpm: real latents noised forward to grid level K, ``z_K = sqrt(a_K) z0 + sqrt(1 - a_K) eps``, then sampled
  back like D3HR's latents.
"""

from __future__ import annotations

import torch
from torch import nn

from d3hr.utils.seeding import generator_for

KMEANS_INIT = 10  # k-means restarts (sklearn's n_init), fixed so the result depends on the seed alone
FEATURE_BATCH = 500  # images per forward pass of the feature network


def random_subset(n: int, k: int, seed: int, c: int) -> torch.Tensor:
    """``min(k, n)`` distinct positions in range(n) for class ``c``, drawn uniformly, seeded by (seed, c)."""
    return torch.randperm(n, generator=generator_for(seed, "random-real", c))[:k]


def herding_indices(features: torch.Tensor, k: int, target: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy herding: ``min(k, n)`` distinct rows of ``features`` (n, D) whose running mean tracks ``target`` (D,),
    by default the mean of all rows.

    Step i adds the row f minimising ||(i + 1) mu - (sum of chosen rows) - f||, i.e. the distance between mu and the
    mean of the i + 1 chosen rows (ties: the lowest index). Returns the chosen row indices in order.
    """
    x = features.double()  # (n, D)
    mu = x.mean(dim=0) if target is None else target.double()  # (D,)
    total = torch.zeros_like(mu)
    free = torch.ones(len(x), dtype=torch.bool)
    chosen = []
    for i in range(min(k, len(x))):
        dist = ((i + 1) * mu - total - x).norm(dim=1)  # (n,)
        dist[~free] = float("inf")
        j = int(dist.argmin())
        chosen.append(j)
        free[j] = False
        total += x[j]
    return torch.as_tensor(chosen, dtype=torch.long)


def kmeans_centroids(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k-means (Lloyd, k-means++ init, ``KMEANS_INIT`` restarts, sklearn) of rows ``x`` (n, D): centroids (k, D)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=KMEANS_INIT, random_state=seed % 2**32).fit(x.double().numpy())
    return torch.from_numpy(km.cluster_centers_).float()


@torch.no_grad()
def penultimate_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Inputs of ``model``'s last ``nn.Linear`` for uint8 images (N, C, H, W) given in [-1, 1], as the teacher
    recipe trains: (N, D)."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    device = next(model.parameters()).device
    feats: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: feats.append(inputs[0].flatten(1).float().cpu()))
    try:
        model.eval()
        for i in range(0, len(images), FEATURE_BATCH):
            model(images[i : i + FEATURE_BATCH].to(device).float() / 127.5 - 1.0)
    finally:
        hook.remove()
    return torch.cat(feats)
