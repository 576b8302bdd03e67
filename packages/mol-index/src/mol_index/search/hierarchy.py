"""A learned hierarchy of item clusters scored top-down with the learned similarity (HSNN).

:class:`HierarchicalIndex` holds a tree of clusters over an item side: per level ``(C_l, Px, d)``
centroids (+ ``(C_l, P)`` gating) and parents, and every item as a residual of its leaf centroid.
:meth:`HierarchicalIndex.build` clusters the items top-down with k-means (``branching`` clusters per
level; :mod:`mol_index.search.hierarchy_build`); :meth:`HierarchicalIndex.search` keeps the ``beam[l]``
best clusters of each level among the children of those kept one level up, then scores every live item
of the chosen leaves exactly, and widens to more leaves when fewer than ``k`` items remain; ``add`` and
``remove`` change the items without a rebuild. :class:`mol_index.layers.hierarchical.HierarchicalLayer`
trains the centroids with the model and exports such an index. The algorithm, its simplifications and
measurements: docs/mol-index.md, "Hierarchical index (HSNN)".

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

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mol_core.errors import ConfigError, ShapeError
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index._inputs import Exclude, check_k, exclusion_tensor
from mol_index.search.exact import topk_any_order
from mol_index.search.hierarchy_build import (
    Structure,
    assemble,
    check_beam,
    check_branching,
    check_corpus,
    check_weight,
    descend,
    flatten,
    search_structure,
    top_down_kmeans,
    tree_from_tensors,
    tree_tensors,
)

__all__ = ["HierarchicalIndex", "HierarchicalSearchResult"]

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


# ------------------------------------------------------------------------------------------- the index


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
        self._cache: Structure | None = None
        self._ordered: ItemSide | None = None

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
        levels = check_branching(branching)
        check_corpus(corpus)
        weight = check_weight(gating_weight)
        values = flatten(corpus.to("cpu"))  # (N, D)
        points = values if weight == 1.0 else flatten(corpus.to("cpu"), weight)  # (N, D)
        centroids, parents, leaf_of = top_down_kmeans(points, values, levels, iterations, seed)
        return assemble(corpus, values, centroids, parents, leaf_of, levels, weight, recompute=True)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> HierarchicalIndex:
        """The index :meth:`to_tensors` stored.

        Raises:
            ArtifactError: a tensor is missing or the parts do not fit together.
        """
        return tree_from_tensors(tensors)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Plain CPU tensors for safetensors: ``level{i}.embeddings`` ``(C_i, Px, d)``, ``level{i}.gating``
        ``(C_i, P)``, ``level{i}.parents`` ``(C_i,)``, ``leaf_of`` ``(N,)``, ``residual.embeddings``
        ``(N, Px, d)``, ``residual.gating`` ``(N, P)``, ``removed`` ``(N,)``, ``branching`` ``(L,)`` and
        ``gating_weight`` ``()``."""
        return tree_tensors(self)

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
        flat_centroids = [flatten(c, self.gating_weight) for c in self.centroids]
        leaf = descend(flatten(items, self.gating_weight), flat_centroids, self.parents)  # (n,)
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
        self._ordered = None
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
        self._ordered = None

    # ------------------------------------------------------------------ search

    def _structure(self) -> Structure:
        """Cached CSR views: children table per level, live items grouped by leaf."""
        if self._cache is None:
            self._cache = search_structure(self.parents, self.leaf_of, self.removed, self.num_leaves)
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
        beams = check_beam(beam, self.num_levels)
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
            slots = self._slots_in(leaves, ex)  # (X,) positions in the leaf-ordered items
            scores = self._score_slots(similarity, one, slots)  # (1, X)
            rows = structure.order[slots].to(device).unsqueeze(0)  # (1, X), grouped by leaf
            top_scores, top_rows = topk_any_order(scores, rows, k)  # (1, k)
            out_scores.append(top_scores)
            out_rows.append(top_rows)
            scored[b] += extra + slots.numel()
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

    def _leaf_ordered(self) -> ItemSide:
        """The live items rebuilt (centroid + residual) in ``Structure.order``, so each leaf's items are
        one contiguous block; built at the first search after a change (one more copy of the live items)."""
        if self._ordered is None:
            self._ordered = self.items(self._structure().order)
        return self._ordered

    def _slots_in(self, leaves: torch.Tensor, ex: torch.Tensor | None) -> torch.Tensor:
        """Positions in ``Structure.order`` of the live, non-excluded items of ``leaves``, leaf by leaf."""
        structure = self._structure()
        offsets = structure.offsets
        starts, lens = offsets[leaves], offsets[leaves + 1] - offsets[leaves]
        total = int(lens.sum())
        shift = torch.repeat_interleave(starts - (torch.cumsum(lens, 0) - lens), lens)  # (X,)
        slots = shift + torch.arange(total, device=offsets.device)  # (X,)
        ex_rows = self._excluded_rows(ex)
        if ex_rows is not None and ex_rows.numel():
            slots = slots[~torch.isin(structure.order[slots], ex_rows)]
        return slots

    def _score_slots(self, similarity: Similarity, one: QuerySide, slots: torch.Tensor) -> torch.Tensor:
        """``(1, X)`` exact scores of the leaf-ordered items at ``slots`` for one query (runs of
        consecutive slots: the copy reads memory in order)."""
        device = one.embeddings.device
        if slots.numel() == 0:
            return torch.empty(1, 0, device=device)
        ordered = self._leaf_ordered()
        parts = []
        for s in range(0, slots.numel(), _SCORE_CHUNK):
            part = slots[s : s + _SCORE_CHUNK]
            gating = None if ordered.gating is None else ordered.gating.index_select(0, part)
            items = ItemSide(ordered.embeddings.index_select(0, part), gating)
            parts.append(similarity.score_pairs(one, items.to(device)).float())
        return torch.cat(parts, dim=1)
