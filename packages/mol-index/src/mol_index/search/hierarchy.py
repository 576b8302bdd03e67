"""A learned hierarchy of item clusters scored top-down with the learned similarity (HSNN).

HSNN ("Hierarchical Structured Neural Network for Retrieval", Meta, 2024) organises the items in a
learned hierarchy of clusters; the model scores the clusters of the first level, expands only the best,
scores their children, and finally scores the items of the chosen clusters. Clusters are softly assigned
during training and hard-assigned at serving; items are modelled as residuals of their cluster.

What this module does:

- **The index** (:class:`HierarchicalIndex`). Every item is represented by its item side, flattened to
  one vector ``z = concat(embeddings.flatten(), gating_weight * gating)`` of width ``D = Px * d (+ P)``,
  and clusters are formed by Euclidean distance in that space. ``gating_weight`` defaults to 0: the
  embeddings alone decide the clusters, while every cluster still carries its members' mean gating for
  scoring (why, with the measurement: docs/mol-index.md, "Hierarchical index").
  :meth:`HierarchicalIndex.build` clusters the ``z`` top-down with k-means (level 1 into
  ``branching[0]`` clusters, each cluster's members into up to ``branching[1]`` children, ...); a cluster
  with fewer members than children gets fewer children, and no cluster is empty. Each k-means trains on
  at most ``256`` points per cluster (a seeded sample, as FAISS does), then assigns all members. A
  cluster's representative is an item side entry itself, the mean of its members' embeddings ``(Px, d)``
  and gating ``(P)``, so clusters are scored by ``similarity.score_pairs`` exactly like items. Items are
  stored as residuals of their leaf centroid and rebuilt (centroid + residual) for scoring: lossless up
  to float32 rounding.
- **Search** keeps the ``beam[l]`` best clusters of each level among the children of the clusters kept
  one level up, then scores every live item of the chosen leaves exactly and returns the top-k. When the
  chosen leaves hold fewer than ``k`` items that are neither removed nor excluded, the search scores all
  leaf centroids for that query and adds the best remaining leaves until ``k`` items are reachable, so
  ``k`` results come back whenever ``k`` items remain.
- **Joint training** (:class:`mol_index.layers.hierarchical.HierarchicalLayer`): learnable centroids per
  level with a soft k-means loss and a routing loss that teaches the similarity to score the right
  clusters highest; its ``export_index`` turns a trained layer into an index without another k-means.

Simplifications: the MoNN towers (user, item, interaction towers and fusion head) are not built: the
learned similarity is the MoL head of the model (or a dot product). The layer's levels are independent
flat clusterings (level ``l`` has ``prod(branching[:l])`` centroid slots); the tree is derived at export by
attaching every centroid to its nearest centroid one level up. Residuals are stored in full precision
(no compression). Items added after the build are attached to the nearest leaf; centroids do not adapt.

Shape symbols: ``B`` queries, ``N`` items (rows), ``Pq``/``Px`` query/item components, ``d`` component
width, ``P = Pq * Px`` gating features, ``D = Px * d (+ P)`` flattened item width, ``C_l`` clusters of
level ``l``, ``L`` levels, ``k`` results.

Example:
    >>> index = HierarchicalIndex.build(corpus, (32, 16), seed=0)       # corpus: (N, Px, d) item side
    >>> found = index.search(similarity, query, 10, beam=(8, 32))       # query: (B, Pq, d)
    >>> found.rows.shape, found.scores.shape, found.scored.shape
    (torch.Size([B, 10]), torch.Size([B, 10]), torch.Size([B]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mol_core.errors import ArtifactError, ConfigError, ShapeError
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index._inputs import Exclude, check_k, exclusion_tensor
from mol_index.clustering import kmeans
from mol_index.search.exact import sorted_topk

__all__ = ["HierarchicalIndex", "HierarchicalSearchResult"]

#: Each k-means trains on at most this many points per cluster (a seeded sample).
_MAX_POINTS_PER_CLUSTER = 256
#: Items assigned to centroids per chunk (bounds the ``(chunk, C)`` distance matrix).
_ASSIGN_CHUNK = 65536
#: Items scored per ``score_pairs`` call at search time.
_SCORE_CHUNK = 16384


@dataclass(frozen=True)
class HierarchicalSearchResult:
    """What :meth:`HierarchicalIndex.search` found.

    Attributes:
        scores: ``(B, k)`` float32 scores, descending; ``-inf`` where fewer than ``k`` items remain.
        rows: ``(B, k)`` int64 item rows; ``-1`` where fewer than ``k`` items remain.
        scored: ``(B,)`` int64, similarity evaluations per query: centroids of every level plus items.
    """

    scores: torch.Tensor
    rows: torch.Tensor
    scored: torch.Tensor


# ------------------------------------------------------------------------------------------- helpers


def _check_branching(branching: int | Sequence[int]) -> tuple[int, ...]:
    levels = (branching,) if isinstance(branching, int) else tuple(branching)
    if not levels or any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in levels):
        raise ConfigError(
            "branching must be one or more integers >= 2 (clusters of level 1, then children per cluster, "
            f"e.g. (32, 16)); got {branching!r}"
        )
    return levels


def _check_weight(gating_weight: float) -> float:
    if isinstance(gating_weight, bool) or not 0.0 <= float(gating_weight) < math.inf:
        raise ConfigError(f"gating_weight must be a finite number >= 0; got {gating_weight!r}")
    return float(gating_weight)


def _check_beam(beam: int | Sequence[int], levels: int) -> tuple[int, ...]:
    beams = (beam,) * levels if isinstance(beam, int) else tuple(beam)
    if len(beams) != levels or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in beams):
        raise ConfigError(
            f"beam must be a positive integer or {levels} positive integers (one per level); got {beam!r}"
        )
    return beams


def _flatten(items: ItemSide, gating_weight: float = 1.0) -> torch.Tensor:
    """``(N, Px, d)`` (+ ``(N, P)``) -> ``(N, D)`` float32: embeddings, then ``gating_weight * gating``."""
    flat = items.embeddings.reshape(items.embeddings.shape[0], -1).float()  # (N, Px*d)
    if items.gating is None:
        return flat
    return torch.cat([flat, gating_weight * items.gating.float()], dim=1)  # (N, D)


def _unflatten(points: torch.Tensor, px: int, dim: int, gated: bool) -> ItemSide:
    """``(C, D)`` -> item side ``(C, Px, d)`` (+ ``(C, P)``)."""
    emb = points[:, : px * dim].reshape(-1, px, dim)  # (C, Px, d)
    return ItemSide(emb.contiguous(), points[:, px * dim :].contiguous() if gated else None)


def _nearest(
    points: torch.Tensor,
    centroids: torch.Tensor,
    node: torch.Tensor | None = None,
    parents: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(n,)`` index of the nearest of ``(C, D)`` centroids; with ``node (n,)`` and ``parents (C,)``, the
    nearest among the children of each point's node (the nearest overall where the node has none)."""
    out = torch.empty(points.shape[0], dtype=torch.int64, device=points.device)
    for start in range(0, points.shape[0], _ASSIGN_CHUNK):
        stop = start + _ASSIGN_CHUNK
        dist = torch.cdist(points[start:stop], centroids)  # (n, C)
        best = dist.argmin(1)  # (n,)
        if node is not None and parents is not None:
            allowed = node[start:stop].unsqueeze(1) == parents.unsqueeze(0)  # (n, C)
            masked = dist.masked_fill(~allowed, float("inf")).min(1)
            best = torch.where(torch.isinf(masked.values), best, masked.indices)
        out[start:stop] = best
    return out


def _top_down_kmeans(
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
                if len(members) > _MAX_POINTS_PER_CLUSTER * wanted:
                    pick = torch.randperm(len(members), generator=gen)[: _MAX_POINTS_PER_CLUSTER * wanted]
                    sample = pts[pick]
                found = kmeans(sample, wanted, iterations=iterations, seed=seed + counter)  # (c, D)
                counter += 1
                assign = _nearest(pts, found)  # (n,)
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


def _descend(
    points: torch.Tensor, centroids: list[torch.Tensor], parents: list[torch.Tensor]
) -> torch.Tensor:
    """``(n,)`` leaf of each ``(n, D)`` point: the nearest cluster of each level among the children of
    the cluster chosen one level up (greedy descent by Euclidean distance)."""
    node = _nearest(points, centroids[0])  # (n,)
    for level in range(1, len(centroids)):
        node = _nearest(points, centroids[level], node, parents[level])
    return node


# ------------------------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class _Structure:
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


class HierarchicalIndex:
    """A tree of item clusters over a corpus, searched top-down with the learned similarity.

    Rows are positions in the corpus, ``0 .. N-1`` at build time; :meth:`add` appends rows and
    :meth:`remove` marks rows removed without renumbering, so a row names the same item for the index's
    lifetime. Build with :meth:`build` or :meth:`HierarchicalLayer.export_index`; the constructor takes the
    parts as :meth:`to_tensors` names them.

    Args:
        centroids: per level, the ``(C_l, Px, d)`` (+ ``(C_l, P)``) cluster representatives.
        parents: per level, ``(C_l,)`` int64 cluster of the level above (level 1: all 0); the children of
            a cluster must be numbered contiguously.
        leaf_of: ``(N,)`` int64 leaf of each row.
        residuals: ``(N, Px, d)`` (+ ``(N, P)``) item side minus its leaf centroid.
        removed: ``(N,)`` bool, rows removed by :meth:`remove`.
        branching: the branching the index was built with (recorded, not used by search).
        gating_weight: weight of the gating features in the clustering space (used by :meth:`add`).
    """

    def __init__(
        self,
        centroids: list[ItemSide],
        parents: list[torch.Tensor],
        leaf_of: torch.Tensor,
        residuals: ItemSide,
        removed: torch.Tensor,
        branching: tuple[int, ...],
        *,
        gating_weight: float = 0.0,
    ) -> None:
        self.centroids, self.parents = centroids, parents
        self.gating_weight = gating_weight
        self.leaf_of, self.residuals, self.removed = leaf_of, residuals, removed
        self.branching = branching
        self._cache: _Structure | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        corpus: ItemSide,
        branching: int | Sequence[int],
        *,
        iterations: int = 20,
        seed: int = 0,
        gating_weight: float = 0.0,
    ) -> HierarchicalIndex:
        """Clusters ``corpus`` top-down by k-means (see the module docstring).

        Args:
            corpus: ``N`` items, embeddings ``(N, Px, d)``, gating ``(N, P)`` or ``None``.
            branching: clusters of level 1, then children per cluster of each further level.
            iterations: Lloyd iterations of every k-means.
            seed: seeds the samples and k-means++ (same seed, same index).
            gating_weight: weight of the gating features in the clustering space (see the module).

        Raises:
            ConfigError: a branching entry < 2, no levels, or fewer items than ``branching[0]``.
            ShapeError: corpus embeddings are not ``(N, Px, d)``.
        """
        levels = _check_branching(branching)
        _check_corpus(corpus)
        weight = _check_weight(gating_weight)
        values = _flatten(corpus.to("cpu"))  # (N, D)
        points = values if weight == 1.0 else _flatten(corpus.to("cpu"), weight)  # (N, D)
        centroids, parents, leaf_of = _top_down_kmeans(points, values, levels, iterations, seed)
        return _assemble(corpus, values, centroids, parents, leaf_of, levels, weight, recompute=True)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> HierarchicalIndex:
        """The index :meth:`to_tensors` stored.

        Raises:
            ArtifactError: a tensor is missing or the parts do not fit together.
        """
        try:
            branching = tuple(int(b) for b in tensors["branching"].tolist())
            gated = "residual.gating" in tensors
            centroids = [
                ItemSide(tensors[f"level{i}.embeddings"], tensors[f"level{i}.gating"] if gated else None)
                for i in range(len(branching))
            ]
            parents = [tensors[f"level{i}.parents"].long() for i in range(len(branching))]
            residuals = ItemSide(
                tensors["residual.embeddings"], tensors["residual.gating"] if gated else None
            )
            index = cls(
                centroids,
                parents,
                tensors["leaf_of"].long(),
                residuals,
                tensors["removed"].bool(),
                branching,
                gating_weight=float(tensors["gating_weight"]),
            )
        except KeyError as err:
            raise ArtifactError(
                f"hierarchical index tensors lack {err}; was it written by to_tensors?"
            ) from err
        if index.leaf_of.shape[0] != residuals.embeddings.shape[0] or (
            index.leaf_of.numel() > 0 and int(index.leaf_of.max()) >= centroids[-1].embeddings.shape[0]
        ):
            raise ArtifactError(
                "hierarchical index tensors do not fit: leaf_of, residuals and leaves disagree"
            )
        return index

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Plain CPU tensors for safetensors: ``level{i}.embeddings`` ``(C_i, Px, d)``, ``level{i}.gating``
        ``(C_i, P)``, ``level{i}.parents`` ``(C_i,)``, ``leaf_of`` ``(N,)``, ``residual.embeddings``
        ``(N, Px, d)``, ``residual.gating`` ``(N, P)``, ``removed`` ``(N,)``, ``branching`` ``(L,)`` and
        ``gating_weight`` ``()``."""
        out = {
            "branching": torch.tensor(self.branching, dtype=torch.int64),
            "gating_weight": torch.tensor(self.gating_weight, dtype=torch.float64),
            "leaf_of": self.leaf_of,
            "removed": self.removed,
            "residual.embeddings": self.residuals.embeddings,
        }
        if self.residuals.gating is not None:
            out["residual.gating"] = self.residuals.gating
        for i, (side, parents) in enumerate(zip(self.centroids, self.parents, strict=True)):
            out[f"level{i}.embeddings"] = side.embeddings
            out[f"level{i}.parents"] = parents
            if side.gating is not None:
                out[f"level{i}.gating"] = side.gating
        return {name: t.detach().cpu().contiguous() for name, t in out.items()}

    def to(self, device: torch.device | str) -> HierarchicalIndex:
        """A copy on ``device``; search the copy with queries on that device."""
        return HierarchicalIndex(
            [c.to(device) for c in self.centroids],
            [p.to(device) for p in self.parents],
            self.leaf_of.to(device),
            self.residuals.to(device),
            self.removed.to(device),
            self.branching,
            gating_weight=self.gating_weight,
        )

    # ------------------------------------------------------------------ sizes

    @property
    def num_rows(self) -> int:
        """Rows ever stored (removed ones included): the next :meth:`add` starts at this row."""
        return int(self.leaf_of.shape[0])

    @property
    def num_items(self) -> int:
        """Live items: rows not removed."""
        return int((~self.removed).sum())

    @property
    def num_leaves(self) -> int:
        """Clusters of the last level."""
        return int(self.centroids[-1].embeddings.shape[0])

    @property
    def num_levels(self) -> int:
        """``L``."""
        return len(self.centroids)

    def items(self, rows: torch.Tensor) -> ItemSide:
        """The item side of ``rows``, rebuilt as leaf centroid + residual: ``(n, Px, d)`` (+ ``(n, P)``)."""
        leaf = self.leaf_of[rows]  # (n,)
        leaves, res = self.centroids[-1], self.residuals
        emb = leaves.embeddings[leaf] + res.embeddings[rows]  # (n, Px, d)
        gating = (
            None if res.gating is None or leaves.gating is None else leaves.gating[leaf] + res.gating[rows]
        )
        return ItemSide(emb, gating)

    # ------------------------------------------------------------------ updates

    def add(self, items: ItemSide) -> torch.Tensor:
        """Attaches new items to the nearest leaf (greedy descent, centroids unchanged); no rebuild.

        Args:
            items: ``n`` items, embeddings ``(n, Px, d)``, gating ``(n, P)`` exactly when the index has it.

        Returns:
            ``(n,)`` int64 rows of the new items.

        Raises:
            ShapeError: the items do not have the corpus's ``(Px, d)`` / gating shape.
        """
        res = self.residuals
        want = tuple(res.embeddings.shape[1:])
        if items.embeddings.dim() != 3 or tuple(items.embeddings.shape[1:]) != want:
            raise ShapeError(
                f"added item embeddings must have shape (n, Px, d) = (n, {want[0]}, {want[1]}); "
                f"got {tuple(items.embeddings.shape)}"
            )
        n = items.embeddings.shape[0]
        if (items.gating is None) != (res.gating is None) or (
            res.gating is not None
            and items.gating is not None
            and tuple(items.gating.shape) != (n, res.gating.shape[1])
        ):
            expected = (
                "no gating" if res.gating is None else f"gating of shape (n={n}, P={res.gating.shape[1]})"
            )
            got = "none" if items.gating is None else str(tuple(items.gating.shape))
            raise ShapeError(f"added items must have {expected}, like the corpus; got {got}")
        device = self.leaf_of.device
        items = items.to(device)
        flat_centroids = [_flatten(c, self.gating_weight) for c in self.centroids]
        leaf = _descend(_flatten(items, self.gating_weight), flat_centroids, self.parents)  # (n,)
        leaves = self.centroids[-1]
        emb = items.embeddings.to(res.embeddings.dtype) - leaves.embeddings[leaf]  # (n, Px, d)
        gating = None
        if res.gating is not None and items.gating is not None and leaves.gating is not None:
            gating = torch.cat([res.gating, items.gating.to(res.gating.dtype) - leaves.gating[leaf]])
        start = self.num_rows
        self.residuals = ItemSide(torch.cat([res.embeddings, emb]), gating)
        self.leaf_of = torch.cat([self.leaf_of, leaf])
        self.removed = torch.cat([self.removed, torch.zeros(n, dtype=torch.bool, device=device)])
        self._cache = None
        return torch.arange(start, start + n, device=device)

    def remove(self, rows: torch.Tensor | Sequence[int]) -> None:
        """Marks ``rows`` removed: never returned again; other rows keep their numbers.

        Raises:
            ConfigError: a row outside ``[0, num_rows)``.
        """
        rows = torch.as_tensor(rows, dtype=torch.int64, device=self.leaf_of.device).reshape(-1)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.num_rows):
            raise ConfigError(f"rows to remove must lie in [0, {self.num_rows}); got {rows.tolist()[:10]}")
        self.removed = self.removed.clone()
        self.removed[rows] = True
        self._cache = None

    # ------------------------------------------------------------------ search

    def _structure(self) -> _Structure:
        """Cached CSR views: children table per level, live items grouped by leaf."""
        if self._cache is None:
            device = self.leaf_of.device
            tables = []
            for level in range(1, self.num_levels):
                above = self.centroids[level - 1].embeddings.shape[0]
                counts = torch.bincount(self.parents[level], minlength=above)  # (C_{l-1},)
                starts = torch.cumsum(counts, 0) - counts
                slot = torch.arange(int(counts.max()), device=device)  # (b,)
                table = starts.unsqueeze(1) + slot  # (C_{l-1}, b)
                tables.append(table.masked_fill(slot >= counts.unsqueeze(1), -1))
            live = (~self.removed).nonzero().squeeze(1)  # (N_live,)
            order = live[torch.argsort(self.leaf_of[live], stable=True)]  # live rows grouped by leaf
            sizes = torch.bincount(self.leaf_of[live], minlength=self.num_leaves)  # (C_L,)
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(sizes, 0)])
            self._cache = _Structure(tables, order, offsets, sizes)
        return self._cache

    @torch.no_grad()
    def search(
        self,
        similarity: Similarity,
        query: QuerySide,
        k: int,
        *,
        beam: int | Sequence[int],
        exclude: Exclude | None = None,
    ) -> HierarchicalSearchResult:
        """Top-k rows per query by beam search down the tree, then exact scoring of the chosen leaves.

        Args:
            similarity: scores clusters and items (``eval()`` mode).
            query: ``B`` queries, embeddings ``(B, Pq, d)``.
            k: results per query, ``1 <= k <=`` live items.
            beam: clusters kept per level (one int for every level, or one per level).
            exclude: rows to leave out per query, as for :func:`~mol_index.search.exact.exact_search`.

        Returns:
            A :class:`HierarchicalSearchResult`; ties go to the smaller row, as in exact search. ``scored``
            counts every centroid and item scored: all level-1 centroids, the children of the kept
            clusters at each deeper level, the live non-excluded items of the chosen leaves, and, when a
            query had to widen (fewer than ``k`` reachable items), all leaf centroids and the added leaves'
            items. Removed and excluded items are skipped, not scored.

        Raises:
            ConfigError: ``k`` or ``beam`` out of range.
            ShapeError: the query does not fit the similarity, or ``exclude`` has the wrong shape.
        """
        check_k(k, self.num_items)
        beams = _check_beam(beam, self.num_levels)
        batch, device = query.batch_size, query.embeddings.device
        structure = self._structure()
        children = structure.children
        scored = torch.zeros(batch, dtype=torch.int64, device=device)
        level_scores = similarity.score_pairs(query, self.centroids[0]).float()  # (B, C_1)
        scored += level_scores.shape[1]
        nodes = level_scores.topk(min(beams[0], level_scores.shape[1]), dim=1)  # (B, beam_1)
        chosen, chosen_scores = nodes.indices, nodes.values
        for level in range(1, self.num_levels):
            cand = children[level - 1][chosen]  # (B, beam, b)
            cand = cand.masked_fill(torch.isneginf(chosen_scores).unsqueeze(2), -1).flatten(1)  # (B, X)
            valid = cand >= 0
            safe = cand.clamp_min(0)
            side = self.centroids[level]
            gating = None if side.gating is None else side.gating[safe]  # (B, X, P)
            cand_scores = similarity.score_pairs(query, ItemSide(side.embeddings[safe], gating)).float()
            cand_scores = cand_scores.masked_fill(~valid, float("-inf"))  # (B, X)
            scored += valid.sum(1)
            top = cand_scores.topk(min(beams[level], cand_scores.shape[1]), dim=1)
            chosen, chosen_scores = cand.gather(1, top.indices), top.values  # (B, beam_l)
            chosen = chosen.masked_fill(torch.isneginf(chosen_scores), -1)
        excluded = exclusion_tensor(exclude, batch)
        out_scores, out_rows = [], []
        for b in range(batch):
            one = QuerySide(
                query.embeddings[b : b + 1], None if query.gating is None else query.gating[b : b + 1]
            )
            ex = None if excluded is None else excluded[b].to(self.leaf_of.device)
            leaves = chosen[b][chosen[b] >= 0].to(self.leaf_of.device)
            leaves, extra = self._widen(similarity, one, leaves, ex, k)
            rows = self._rows_in(leaves, ex)  # (X,) ascending
            scores = self._score_rows(similarity, one, rows)  # (1, X)
            top_scores, top_rows = sorted_topk(scores, rows.to(device).unsqueeze(0), k)  # (1, k)
            out_scores.append(top_scores)
            out_rows.append(top_rows)
            scored[b] += extra + rows.numel()
        return HierarchicalSearchResult(torch.cat(out_scores), torch.cat(out_rows), scored)

    def _excluded_rows(self, ex: torch.Tensor | None) -> torch.Tensor | None:
        """Distinct live rows among one query's ``(L,)`` exclusions (``-1`` padding and removed dropped)."""
        if ex is None:
            return None
        ex = torch.unique(ex[(ex >= 0) & (ex < self.num_rows)])
        return ex[~self.removed[ex]]

    def _widen(
        self, similarity: Similarity, one: QuerySide, leaves: torch.Tensor, ex: torch.Tensor | None, k: int
    ) -> tuple[torch.Tensor, int]:
        """Adds the best-scored remaining leaves until ``k`` items are reachable; ``(leaves, centroids
        scored for it)``."""
        available = self._structure().sizes.clone()  # (C_L,)
        ex_rows = self._excluded_rows(ex)
        if ex_rows is not None and ex_rows.numel():
            available -= torch.bincount(self.leaf_of[ex_rows], minlength=self.num_leaves)
        if int(available[leaves].sum()) >= k:
            return leaves, 0
        leaf_side = self.centroids[-1]
        scores = similarity.score_pairs(one, leaf_side).float()[0].to(leaves.device)  # (C_L,)
        scores[leaves] = float("-inf")
        order = torch.argsort(scores, descending=True, stable=True)[: self.num_leaves - leaves.numel()]
        need = k - int(available[leaves].sum())
        reach = torch.cumsum(available[order], 0)  # (C_L - beam,)
        count = min(int((reach < need).sum()) + 1, order.numel())
        return torch.cat([leaves, order[:count]]), self.num_leaves

    def _rows_in(self, leaves: torch.Tensor, ex: torch.Tensor | None) -> torch.Tensor:
        """Live, non-excluded rows of ``leaves``, ascending."""
        structure = self._structure()
        order, offsets = structure.order, structure.offsets
        starts, lens = offsets[leaves], offsets[leaves + 1] - offsets[leaves]
        total = int(lens.sum())
        shift = torch.repeat_interleave(starts - (torch.cumsum(lens, 0) - lens), lens)  # (X,)
        rows = order[shift + torch.arange(total, device=order.device)].sort().values  # (X,)
        ex_rows = self._excluded_rows(ex)
        if ex_rows is not None and ex_rows.numel():
            rows = rows[~torch.isin(rows, ex_rows)]
        return rows

    def _score_rows(self, similarity: Similarity, one: QuerySide, rows: torch.Tensor) -> torch.Tensor:
        """``(1, X)`` exact scores of ``rows`` (rebuilt from centroid + residual) for one query."""
        device = one.embeddings.device
        if rows.numel() == 0:
            return torch.empty(1, 0, device=device)
        parts = [
            similarity.score_pairs(one, self.items(rows[s : s + _SCORE_CHUNK]).to(device)).float()
            for s in range(0, rows.numel(), _SCORE_CHUNK)
        ]
        return torch.cat(parts, dim=1)


def _check_corpus(corpus: ItemSide) -> None:
    emb = corpus.embeddings
    if emb.dim() != 3:
        raise ShapeError(f"corpus embeddings must have shape (N, Px, d); got {tuple(emb.shape)}")
    if corpus.gating is not None and (corpus.gating.dim() != 2 or corpus.gating.shape[0] != emb.shape[0]):
        raise ShapeError(
            f"corpus gating must have shape (N={emb.shape[0]}, P); got {tuple(corpus.gating.shape)}"
        )


def _assemble(
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
        new_centroids.append(_unflatten(flat, px, dim, corpus.gating is not None))
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
    return HierarchicalIndex(
        new_centroids, new_parents, leaf, residuals, removed, branching, gating_weight=gating_weight
    )
