"""Building blocks of the cluster tree of :mod:`mol_index.search.hierarchy`: argument checks, the
flattened clustering space, nearest-centroid assignment, top-down k-means and assembling a tree.

Shape symbols: ``N`` items, ``Px`` item components, ``d`` width, ``P`` gating features, ``D = Px * d (+ P)``
flattened width, ``C_l`` clusters of level ``l``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mol_core.errors import ArtifactError, ConfigError, ShapeError
from mol_core.similarity import ItemSide
from mol_index.clustering import kmeans

if TYPE_CHECKING:
    from mol_index.search.hierarchy import HierarchicalIndex

__all__ = [
    "Structure",
    "assemble",
    "check_beam",
    "check_branching",
    "check_corpus",
    "check_weight",
    "descend",
    "flatten",
    "nearest",
    "search_structure",
    "top_down_kmeans",
    "tree_from_tensors",
    "tree_tensors",
    "unflatten",
]

#: Each k-means trains on at most this many points per cluster (a seeded sample).
MAX_POINTS_PER_CLUSTER = 256
#: Items assigned to centroids per chunk (bounds the ``(chunk, C)`` distance matrix).
ASSIGN_CHUNK = 65536


def check_branching(branching: int | Sequence[int]) -> tuple[int, ...]:
    levels = (branching,) if isinstance(branching, int) else tuple(branching)
    if not levels or any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in levels):
        raise ConfigError(
            "branching must be one or more integers >= 2 (clusters of level 1, then children per cluster, "
            f"e.g. (32, 16)); got {branching!r}"
        )
    return levels


def check_weight(gating_weight: float) -> float:
    if isinstance(gating_weight, bool) or not 0.0 <= float(gating_weight) < math.inf:
        raise ConfigError(f"gating_weight must be a finite number >= 0; got {gating_weight!r}")
    return float(gating_weight)


def check_beam(beam: int | Sequence[int], levels: int) -> tuple[int, ...]:
    beams = (beam,) * levels if isinstance(beam, int) else tuple(beam)
    if len(beams) != levels or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in beams):
        raise ConfigError(
            f"beam must be a positive integer or {levels} positive integers (one per level); got {beam!r}"
        )
    return beams


def flatten(items: ItemSide, gating_weight: float = 1.0) -> torch.Tensor:
    """``(N, Px, d)`` (+ ``(N, P)``) -> ``(N, D)`` float32: embeddings, then ``gating_weight * gating``."""
    flat = items.embeddings.reshape(items.embeddings.shape[0], -1).float()  # (N, Px*d)
    if items.gating is None:
        return flat
    return torch.cat([flat, gating_weight * items.gating.float()], dim=1)  # (N, D)


def unflatten(points: torch.Tensor, px: int, dim: int, gated: bool) -> ItemSide:
    """``(C, D)`` -> item side ``(C, Px, d)`` (+ ``(C, P)``)."""
    emb = points[:, : px * dim].reshape(-1, px, dim)  # (C, Px, d)
    return ItemSide(emb.contiguous(), points[:, px * dim :].contiguous() if gated else None)


def nearest(
    points: torch.Tensor,
    centroids: torch.Tensor,
    node: torch.Tensor | None = None,
    parents: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(n,)`` index of the nearest of ``(C, D)`` centroids; with ``node (n,)`` and ``parents (C,)``, the
    nearest among the children of each point's node (the nearest overall where the node has none)."""
    out = torch.empty(points.shape[0], dtype=torch.int64, device=points.device)
    for start in range(0, points.shape[0], ASSIGN_CHUNK):
        stop = start + ASSIGN_CHUNK
        dist = torch.cdist(points[start:stop], centroids)  # (n, C)
        best = dist.argmin(1)  # (n,)
        if node is not None and parents is not None:
            allowed = node[start:stop].unsqueeze(1) == parents.unsqueeze(0)  # (n, C)
            masked = dist.masked_fill(~allowed, float("inf")).min(1)
            best = torch.where(torch.isinf(masked.values), best, masked.indices)
        out[start:stop] = best
    return out


def top_down_kmeans(
    points: torch.Tensor, values: torch.Tensor, branching: tuple[int, ...], iterations: int, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Top-down k-means of ``(N, D)`` points (the clustering space); centroids average ``(N, D)`` values
    (the flattened item sides with unweighted gating).

    Returns:
        ``(centroids, parents, leaf_of)``: per level ``(C_l, D)`` means of the members' values and
        ``(C_l,)`` parent clusters (level 1: all 0), children of a cluster numbered contiguously; ``(N,)``
        leaf of each point.
    """
    if points.shape[0] < branching[0]:
        raise ConfigError(
            f"too few items for the first level: {points.shape[0]} items, {branching[0]} clusters wanted; "
            "use a smaller branching[0] or more items"
        )
    gen = torch.Generator().manual_seed(seed)
    node_of = torch.zeros(points.shape[0], dtype=torch.int64)  # (N,)
    num_nodes, counter = 1, 0
    centroids: list[torch.Tensor] = []
    parents: list[torch.Tensor] = []
    for fanout in branching:
        order = torch.argsort(node_of, stable=True)
        groups = torch.split(order, torch.bincount(node_of, minlength=num_nodes).tolist())
        new_node_of = torch.empty_like(node_of)
        level_centroids, level_parents = [], []
        offset = 0
        for parent, members in enumerate(groups):
            pts = points[members]  # (n, D)
            wanted = min(fanout, len(members))
            if wanted == 1:
                assign = torch.zeros(len(members), dtype=torch.int64)
            else:
                sample = pts
                if len(members) > MAX_POINTS_PER_CLUSTER * wanted:
                    pick = torch.randperm(len(members), generator=gen)[: MAX_POINTS_PER_CLUSTER * wanted]
                    sample = pts[pick]
                found = kmeans(sample, wanted, iterations=iterations, seed=seed + counter)  # (c, D)
                counter += 1
                assign = nearest(pts, found)  # (n,)
            counts = torch.bincount(assign, minlength=wanted)  # (c,)
            kept = counts > 0  # no empty clusters
            remap = torch.cumsum(kept.long(), 0) - 1  # (c,)
            sums = torch.zeros(wanted, values.shape[1]).index_add_(0, assign, values[members])  # (c, D)
            level_centroids.append(sums[kept] / counts[kept].unsqueeze(1).float())
            level_parents.append(torch.full((int(kept.sum()),), parent, dtype=torch.int64))
            new_node_of[members] = offset + remap[assign]
            offset += int(kept.sum())
        centroids.append(torch.cat(level_centroids))
        parents.append(torch.cat(level_parents))
        node_of, num_nodes = new_node_of, len(centroids[-1])
    return centroids, parents, node_of


def descend(points: torch.Tensor, centroids: list[torch.Tensor], parents: list[torch.Tensor]) -> torch.Tensor:
    """``(n,)`` leaf of each ``(n, D)`` point: the nearest cluster of each level among the children of
    the cluster chosen one level up (greedy descent by Euclidean distance)."""
    node = nearest(points, centroids[0])  # (n,)
    for level in range(1, len(centroids)):
        node = nearest(points, centroids[level], node, parents[level])
    return node


def check_corpus(corpus: ItemSide) -> None:
    emb = corpus.embeddings
    if emb.dim() != 3:
        raise ShapeError(f"corpus embeddings must have shape (N, Px, d); got {tuple(emb.shape)}")
    if corpus.gating is not None and (corpus.gating.dim() != 2 or corpus.gating.shape[0] != emb.shape[0]):
        raise ShapeError(
            f"corpus gating must have shape (N={emb.shape[0]}, P); got {tuple(corpus.gating.shape)}"
        )


def assemble(
    corpus: ItemSide,
    points: torch.Tensor,
    centroids: list[torch.Tensor],
    parents: list[torch.Tensor],
    leaf_of: torch.Tensor,
    branching: tuple[int, ...],
    gating_weight: float,
    *,
    recompute: bool,
) -> HierarchicalIndex:
    """The index of a tree and a hard assignment: empty clusters pruned, children renumbered
    contiguously, centroids the members' means (``recompute``) or kept, items stored as residuals."""
    levels = len(centroids)
    node = [leaf_of]  # node of every item per level, deepest first
    for level in range(levels - 1, 0, -1):
        node.insert(0, parents[level][node[0]])
    new_centroids: list[ItemSide] = []
    new_parents: list[torch.Tensor] = []
    remap_above = torch.zeros(1, dtype=torch.int64)
    px, dim = corpus.embeddings.shape[1], corpus.embeddings.shape[2]
    for level in range(levels):
        counts = torch.bincount(node[level], minlength=centroids[level].shape[0])  # (C_l,)
        kept = (counts > 0).nonzero().squeeze(1)  # (C'_l,) old ids
        parent_new = remap_above[parents[level][kept]]  # (C'_l,)
        kept = kept[torch.argsort(parent_new, stable=True)]  # children contiguous
        remap = torch.full((centroids[level].shape[0],), -1, dtype=torch.int64)
        remap[kept] = torch.arange(kept.numel())
        if recompute:
            sums = torch.zeros(centroids[level].shape[0], points.shape[1]).index_add_(0, node[level], points)
            flat = sums[kept] / counts[kept].unsqueeze(1).float()
        else:
            flat = centroids[level][kept].float()
        new_centroids.append(unflatten(flat, px, dim, corpus.gating is not None))
        new_parents.append(remap_above[parents[level][kept]])
        remap_above = remap
    leaf = remap_above[leaf_of]  # (N,)
    leaves = new_centroids[-1]
    emb = corpus.embeddings.detach().cpu().float()
    residual_gating = None
    if corpus.gating is not None and leaves.gating is not None:
        residual_gating = corpus.gating.detach().cpu().float() - leaves.gating[leaf]  # (N, P)
    residuals = ItemSide(emb - leaves.embeddings[leaf], residual_gating)  # (N, Px, d)
    removed = torch.zeros(leaf.shape[0], dtype=torch.bool)
    from mol_index.search.hierarchy import HierarchicalIndex  # the class this module builds for

    return HierarchicalIndex(
        new_centroids, new_parents, leaf, residuals, removed, branching, gating_weight=gating_weight
    )


def tree_from_tensors(tensors: dict[str, torch.Tensor]) -> HierarchicalIndex:
    """The tree :func:`tree_tensors` stored (:meth:`HierarchicalIndex.from_tensors`).

    Raises:
        ArtifactError: a tensor is missing or the parts do not fit together.
    """
    from mol_index.search.hierarchy import HierarchicalIndex

    try:
        branching = tuple(int(b) for b in tensors["branching"].tolist())
        gated = "residual.gating" in tensors
        centroids = [
            ItemSide(tensors[f"level{i}.embeddings"], tensors[f"level{i}.gating"] if gated else None)
            for i in range(len(branching))
        ]
        parents = [tensors[f"level{i}.parents"].long() for i in range(len(branching))]
        residuals = ItemSide(tensors["residual.embeddings"], tensors["residual.gating"] if gated else None)
        index = HierarchicalIndex(
            centroids,
            parents,
            tensors["leaf_of"].long(),
            residuals,
            tensors["removed"].bool(),
            branching,
            gating_weight=float(tensors["gating_weight"]),
        )
    except KeyError as err:
        raise ArtifactError(f"hierarchical index tensors lack {err}; was it written by to_tensors?") from err
    if index.leaf_of.shape[0] != residuals.embeddings.shape[0] or (
        index.leaf_of.numel() > 0 and int(index.leaf_of.max()) >= centroids[-1].embeddings.shape[0]
    ):
        raise ArtifactError("hierarchical index tensors do not fit: leaf_of, residuals and leaves disagree")
    return index


def tree_tensors(tree: HierarchicalIndex) -> dict[str, torch.Tensor]:
    """Plain CPU tensors of ``tree`` for safetensors (:meth:`HierarchicalIndex.to_tensors`)."""
    out = {
        "branching": torch.tensor(tree.branching, dtype=torch.int64),
        "gating_weight": torch.tensor(tree.gating_weight, dtype=torch.float64),
        "leaf_of": tree.leaf_of,
        "removed": tree.removed,
        "residual.embeddings": tree.residuals.embeddings,
    }
    if tree.residuals.gating is not None:
        out["residual.gating"] = tree.residuals.gating
    for i, (side, parents) in enumerate(zip(tree.centroids, tree.parents, strict=True)):
        out[f"level{i}.embeddings"] = side.embeddings
        out[f"level{i}.parents"] = parents
        if side.gating is not None:
            out[f"level{i}.gating"] = side.gating
    return {name: t.detach().cpu().contiguous() for name, t in out.items()}


@dataclass(frozen=True)
class Structure:
    """Search-time views of an index, rebuilt after :meth:`HierarchicalIndex.add` / ``remove``.

    Attributes:
        children: per level ``l >= 2``, ``(C_{l-1}, b)`` children of each cluster, ``-1`` padding.
        order: ``(N_live,)`` live rows grouped by leaf.
        offsets: ``(C_L + 1,)`` start of each leaf's rows in ``order``.
        sizes: ``(C_L,)`` live rows per leaf.
    """

    children: list[torch.Tensor]
    order: torch.Tensor
    offsets: torch.Tensor
    sizes: torch.Tensor


def search_structure(
    parents: list[torch.Tensor], leaf_of: torch.Tensor, removed: torch.Tensor, num_leaves: int
) -> Structure:
    """The CSR views a search needs: the children table per level and the live items grouped by leaf.

    Args:
        parents: per level ``(C_l,)`` parent cluster (children of a cluster numbered contiguously).
        leaf_of: ``(N,)`` leaf of every item; removed: ``(N,)`` bool; num_leaves: ``C_L``.
    """
    device = leaf_of.device
    tables = []
    for level in range(1, len(parents)):
        above = int(parents[level - 1].shape[0])
        counts = torch.bincount(parents[level], minlength=above)  # (C_{l-1},)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(int(counts.max()), device=device)  # (b,)
        table = starts.unsqueeze(1) + slot  # (C_{l-1}, b)
        tables.append(table.masked_fill(slot >= counts.unsqueeze(1), -1))
    live = (~removed).nonzero().squeeze(1)  # (N_live,)
    order = live[torch.argsort(leaf_of[live], stable=True)]  # live rows grouped by leaf
    sizes = torch.bincount(leaf_of[live], minlength=num_leaves)  # (C_L,)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(sizes, 0)])
    return Structure(tables, order, offsets, sizes)
