"""k-means for the index structures that cluster a corpus (PQ codebooks, the cluster hierarchy)."""

from __future__ import annotations

import torch

from mol_core.errors import ConfigError

__all__ = ["kmeans"]


def kmeans(points: torch.Tensor, clusters: int, *, iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns ``(clusters, d)`` centroids.

    Raises:
        ConfigError: fewer points than clusters.
    """
    if points.shape[0] < clusters:
        raise ConfigError(
            f"k-means needs at least as many points as clusters: {points.shape[0]} points, {clusters} wanted"
        )
    gen = torch.Generator().manual_seed(seed)
    # k-means++ seeding: each next centroid drawn with probability proportional to the squared distance
    # to the nearest one already chosen
    chosen = [int(torch.randint(points.shape[0], (1,), generator=gen))]
    nearest = (points - points[chosen[0]]).pow(2).sum(1)  # (N,)
    for _ in range(clusters - 1):
        weights = nearest if float(nearest.sum()) > 0 else torch.ones_like(nearest)
        pick = int(torch.multinomial(weights, 1, generator=gen))
        chosen.append(pick)
        nearest = torch.minimum(nearest, (points - points[pick]).pow(2).sum(1))
    centroids = points[chosen].clone()
    for _ in range(iterations):
        assign = torch.cdist(points, centroids).argmin(1)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=clusters).unsqueeze(1).to(points.dtype)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)  # empty clusters stay
    return centroids
