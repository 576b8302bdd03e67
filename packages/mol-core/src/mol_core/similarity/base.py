"""The similarity interface shared by training, indexing and serving.

A similarity scores a query against items from two precomputable halves:

- the **query side** (:class:`QuerySide`): ``Pq`` component embeddings of dimension ``d`` per query, plus
  the query's part of the gating network, computed once per request;
- the **item side** (:class:`ItemSide`): ``Px`` component embeddings per item, plus the item's part of the
  gating network, computed offline once per item and stored in a model bundle.

Scoring combines them. The component logits are always ``<f_a(q), g_b(x)> / temperature`` for every pair
of components (``P = Pq * Px`` of them); a subclass only decides how the ``P`` logits are mixed into one
score (:meth:`Similarity.mix`). A dot product is the special case ``Pq = Px = 1`` with no gating, so it
runs through exactly the same scoring code as Mixture-of-Logits.

Shape symbols: ``B`` queries, ``X`` candidates per query, ``N`` corpus items, ``Pq``/``Px`` query/item
components, ``P = Pq * Px``, ``d`` component dimension.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mol_core._checks import check_positive_int, shape_str
from mol_core.errors import ShapeError

__all__ = ["DEFAULT_BLOCK_PAIRS", "ItemSide", "QuerySide", "Similarity", "gather_rows"]

#: (query, item) pairs per block when :meth:`Similarity.score_corpus` picks the block size itself: the
#: ``(B, block, P)`` logits and the gating MLP's ``(B, block, hidden)`` activations then stay in cache
#: (chosen by the block sweep of packages/mol-core/benchmarks/bench_mol_scoring.py; docs/benchmarks.md).
DEFAULT_BLOCK_PAIRS = 4096


@dataclass(frozen=True)
class QuerySide:
    """The query half of a similarity, computed once per query.

    Attributes:
        embeddings: ``(B, Pq, d)`` query component embeddings (L2-normalised where the similarity says so).
        gating: ``(B, P)`` the query's gating features, or ``None`` for similarities without gating.
    """

    embeddings: torch.Tensor
    gating: torch.Tensor | None

    @property
    def batch_size(self) -> int:
        """``B``, the number of queries."""
        return int(self.embeddings.shape[0])


@dataclass(frozen=True)
class ItemSide:
    """The item half of a similarity, computable offline once per item.

    Attributes:
        embeddings: ``(*, Px, d)`` item component embeddings; the leading dimensions are ``(N,)`` for a
            corpus or shared candidates and ``(B, X)`` for per-query candidates.
        gating: ``(*, P)`` the items' gating features, or ``None`` for similarities without gating.
    """

    embeddings: torch.Tensor
    gating: torch.Tensor | None

    @property
    def num_items(self) -> int:
        """The number of items along the last leading dimension (``N`` or ``X``)."""
        return int(self.embeddings.shape[-3])

    def slice(self, start: int, stop: int) -> ItemSide:
        """Returns items ``start:stop`` of a corpus item side (leading shape ``(N,)``)."""
        gating = None if self.gating is None else self.gating[start:stop]
        return ItemSide(self.embeddings[start:stop], gating)

    def to(self, device: torch.device | str) -> ItemSide:
        """Returns a copy on ``device``."""
        gating = None if self.gating is None else self.gating.to(device)
        return ItemSide(self.embeddings.to(device), gating)


class Similarity(nn.Module, ABC):
    """A learned similarity ``phi(q, x)`` scored from a query side and an item side.

    Subclasses build the two sides (:meth:`query_side`, :meth:`item_side`) and mix the ``P`` component
    logits (:meth:`mix`); pair and corpus scoring are implemented here once for every similarity.

    Args:
        num_query_components: ``Pq``.
        num_item_components: ``Px``.
        component_dim: ``d``.
        temperature: the component logits are divided by it.
    """

    def __init__(
        self, *, num_query_components: int, num_item_components: int, component_dim: int, temperature: float
    ) -> None:
        super().__init__()
        self.num_query_components = check_positive_int("num_query_components", num_query_components)
        self.num_item_components = check_positive_int("num_item_components", num_item_components)
        self.component_dim = check_positive_int("component_dim", component_dim)
        self.temperature = temperature

    @property
    def num_components(self) -> int:
        """``P = Pq * Px``, the number of component logits per (query, item) pair."""
        return self.num_query_components * self.num_item_components

    @abstractmethod
    def query_side(self, query_repr: torch.Tensor, user_repr: torch.Tensor | None = None) -> QuerySide:
        """Computes the query side from ``(B, Dq)`` query representations (and ``(B, Du)`` user ones)."""

    @abstractmethod
    def item_side(self, item_repr: torch.Tensor) -> ItemSide:
        """Computes the item side from ``(*, Dx)`` item representations."""

    @abstractmethod
    def mix(
        self, logits: torch.Tensor, query_gating: torch.Tensor | None, item_gating: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixes component logits into scores.

        Args:
            logits: ``(B, X, P)`` component logits (already divided by the temperature).
            query_gating: ``(B, 1, P)`` query gating features, or ``None``.
            item_gating: ``(B, X, P)`` or ``(1, X, P)`` item gating features, or ``None``.

        Returns:
            ``(scores, weights)``: ``(B, X)`` float32 scores and ``(B, X, P)`` float32 mixing weights.
        """

    def mix_scores(
        self, logits: torch.Tensor, query_gating: torch.Tensor | None, item_gating: torch.Tensor | None
    ) -> torch.Tensor:
        """The ``(B, X)`` float32 scores of :meth:`mix` alone; a subclass may skip building the weights."""
        return self.mix(logits, query_gating, item_gating)[0]

    # ---------------------------------------------------------------- scoring, shared by all similarities

    def component_logits(self, query: QuerySide, items: ItemSide) -> torch.Tensor:
        """All ``P`` component logits ``<f_a(q), g_b(x)> / temperature`` for every (query, candidate) pair.

        Args:
            query: ``B`` queries.
            items: per-query candidates ``(B, X, Px, d)`` or candidates shared by all queries ``(X, Px, d)``.

        Returns:
            ``(B, X, P)`` logits, component index ``a * Px + b``.
        """
        self._check_query(query)
        self._check_items(items, query.batch_size)
        f = query.embeddings  # (B, Pq, d)
        g = items.embeddings
        batch, num_q, dim = f.shape
        if g.dim() == 3:  # shared candidates: one GEMM over all (query component, item component) pairs
            num_x, num_i = g.shape[0], g.shape[1]
            flat = f.reshape(batch * num_q, dim) @ g.reshape(num_x * num_i, dim).T  # (B*Pq, X*Px)
            logits = flat.view(batch, num_q, num_x, num_i).permute(0, 2, 1, 3)  # (B, X, Pq, Px)
        else:
            num_x, num_i = g.shape[1], g.shape[2]
            logits = torch.einsum("bqd,bxpd->bxqp", f, g)  # (B, X, Pq, Px)
        return logits.reshape(batch, num_x, num_q * num_i) / self.temperature  # (B, X, P)

    def score_pairs(self, query: QuerySide, items: ItemSide) -> torch.Tensor:
        """Scores each query against its candidates.

        Args:
            query: ``B`` queries.
            items: per-query candidates ``(B, X, Px, d)`` or shared candidates ``(X, Px, d)``.

        Returns:
            ``(B, X)`` float32 scores.
        """
        logits = self.component_logits(query, items)  # (B, X, P)
        query_gating, item_gating = _gating_features(query, items)
        return self.mix_scores(logits, query_gating, item_gating)

    def score_groups(self, query: QuerySide, items: ItemSide, group_sizes: Sequence[int]) -> torch.Tensor:
        """Scores query rows in groups, each group against its own candidates (per-sequence negatives).

        Args:
            query: ``M`` query rows, group after group.
            items: ``(G, X, Px, d)`` candidates of each group (gating ``(G, X, P)``).
            group_sizes: ``G`` row counts summing to ``M``.

        Returns:
            ``(M, X)`` float32 scores: row ``m`` of group ``g`` against ``items[g]``, as :meth:`score_pairs`
            gives it.
        """
        self._check_query(query)
        sizes = torch.as_tensor([int(size) for size in group_sizes], dtype=torch.long)
        rows = query.batch_size
        g = items.embeddings
        if g.dim() != 4 or g.shape[0] != len(sizes) or int(sizes.sum()) != rows or bool((sizes < 0).any()):
            raise ShapeError(
                f"items must have shape (G, X, Px, d) with one group per entry of group_sizes "
                f"(G = {len(sizes)}) and the sizes must sum to M = {rows}; got items {shape_str(g.shape)} "
                f"and a sum of {int(sizes.sum())}"
            )
        self._check_items(ItemSide(g[0], None if items.gating is None else items.gating[0]), rows)
        device = query.embeddings.device
        group_of_row = torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(device)  # (M,)
        starts = torch.cumsum(sizes, 0) - sizes
        position = torch.arange(rows) - torch.repeat_interleave(starts, sizes)  # (M,) row within its group
        longest = int(sizes.max()) if len(sizes) else 0
        num_q, dim = self.num_query_components, self.component_dim
        num_x, num_i = g.shape[1], g.shape[2]
        padded = query.embeddings.new_zeros(len(sizes), longest, num_q, dim)
        padded = padded.index_put((group_of_row, position.to(device)), query.embeddings)  # (G, Lg, Pq, d)
        candidates = g.reshape(len(sizes), num_x * num_i, dim).transpose(1, 2)  # (G, d, X Px)
        flat = torch.bmm(padded.reshape(len(sizes), longest * num_q, dim), candidates)  # (G, Lg Pq, X Px)
        logits = flat.view(len(sizes), longest, num_q, num_x, num_i)[group_of_row, position.to(device)]
        logits = logits.permute(0, 2, 1, 3).reshape(rows, num_x, num_q * num_i)  # (M, X, P)
        logits = logits / self.temperature
        query_gating = None if query.gating is None else query.gating.unsqueeze(1)  # (M, 1, P)
        item_gating = None if items.gating is None else items.gating[group_of_row]  # (M, X, P)
        return self.mix_scores(logits, query_gating, item_gating)

    def score_gathered(self, query: QuerySide, table: ItemSide, index: torch.Tensor) -> torch.Tensor:
        """Scores each query row against candidates of its own, rows of a table (per-position negatives).

        Args:
            query: ``M`` query rows.
            table: ``(U, Px, d)`` item side of the candidates' items (gating ``(U, P)``).
            index: ``(M, X)`` int64, row ``m``'s candidates as rows of ``table``.

        Returns:
            ``(M, X)`` float32 scores, as :meth:`score_pairs` gives them for the gathered
            ``(M, X, Px, d)`` candidates.
        """
        self._check_items(table, query.batch_size, corpus_only=True)
        if index.dim() != 2 or index.shape[0] != query.batch_size:
            raise ShapeError(f"index must have shape (M={query.batch_size}, X); got {shape_str(index.shape)}")
        gathered = ItemSide(
            gather_rows(table.embeddings, index),
            None if table.gating is None else gather_rows(table.gating, index),
        )  # (M, X, Px, d)
        return self.score_pairs(query, gathered)

    def score_pairs_with_weights(
        self, query: QuerySide, items: ItemSide
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`score_pairs`, also returning the ``(B, X, P)`` mixing weights (for the MI loss)."""
        logits = self.component_logits(query, items)  # (B, X, P)
        query_gating, item_gating = _gating_features(query, items)
        return self.mix(logits, query_gating, item_gating)

    def score_corpus(
        self, query: QuerySide, corpus: ItemSide, *, block_size: int | None = None
    ) -> torch.Tensor:
        """Scores every query against every corpus item, ``block_size`` items at a time.

        Only a ``(B, block_size, P)`` slice of component logits exists at any moment, never ``(B, N, P)``.

        Args:
            query: ``B`` queries.
            corpus: ``(N, Px, d)`` item side of the corpus.
            block_size: items per block; by default ``max(16, DEFAULT_BLOCK_PAIRS // B)``.

        Returns:
            ``(B, N)`` float32 scores, equal to :meth:`score_pairs` with the corpus as shared candidates.
        """
        if block_size is None:
            block_size = max(16, DEFAULT_BLOCK_PAIRS // max(1, query.batch_size))
        check_positive_int("block_size", block_size)
        self._check_items(corpus, query.batch_size, corpus_only=True)
        num_items = corpus.num_items
        out = torch.empty(query.batch_size, num_items, dtype=torch.float32, device=query.embeddings.device)
        for start in range(0, num_items, block_size):
            stop = min(start + block_size, num_items)
            out[:, start:stop] = self.score_pairs(query, corpus.slice(start, stop))  # (B, n)
        return out

    # ---------------------------------------------------------------- validation

    def check_corpus_inputs(self, query: QuerySide, corpus: ItemSide) -> None:
        """Checks ``B`` queries against a shared corpus before scoring them.

        Raises:
            ShapeError: query embeddings not ``(B, Pq, d)`` or gating not ``(B, P)``; corpus embeddings not
                ``(N, Px, d)`` or gating not ``(N, P)``.
        """
        self._check_query(query)
        self._check_items(corpus, query.batch_size, corpus_only=True)

    def _check_query(self, query: QuerySide) -> None:
        f = query.embeddings
        want = ("B", self.num_query_components, self.component_dim)
        if f.dim() != 3 or f.shape[1:] != want[1:]:
            raise ShapeError(f"query embeddings must have shape {shape_str(want)}; got {shape_str(f.shape)}")
        if query.gating is not None and query.gating.shape != (f.shape[0], self.num_components):
            raise ShapeError(
                f"query gating must have shape (B, P) = {shape_str((f.shape[0], self.num_components))}; "
                f"got {shape_str(query.gating.shape)}"
            )

    def _check_items(self, items: ItemSide, batch_size: int, *, corpus_only: bool = False) -> None:
        g = items.embeddings
        tail = (self.num_item_components, self.component_dim)
        if corpus_only:
            allowed = f"(N, {tail[0]}, {tail[1]})"
            ok = g.dim() == 3 and tuple(g.shape[1:]) == tail
        else:
            allowed = f"(X, {tail[0]}, {tail[1]}) or (B={batch_size}, X, {tail[0]}, {tail[1]})"
            ok = (g.dim() == 3 and tuple(g.shape[1:]) == tail) or (
                g.dim() == 4 and g.shape[0] == batch_size and tuple(g.shape[2:]) == tail
            )
        if not ok:
            raise ShapeError(f"item embeddings must have shape {allowed}; got {shape_str(g.shape)}")
        if items.gating is not None and tuple(items.gating.shape) != (*g.shape[:-2], self.num_components):
            want = shape_str((*g.shape[:-2], self.num_components))
            raise ShapeError(f"item gating must have shape {want}; got {shape_str(items.gating.shape)}")


def _gating_features(query: QuerySide, items: ItemSide) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gating features shaped for :meth:`Similarity.mix`: ``(B, 1, P)`` and ``(B or 1, X, P)``."""
    query_gating = None if query.gating is None else query.gating.unsqueeze(1)  # (B, 1, P)
    item_gating = items.gating
    if item_gating is not None and item_gating.dim() == 2:
        item_gating = item_gating.unsqueeze(0)  # (1, X, P)
    return query_gating, item_gating


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a ``(U, ...)`` table and an ``(M, X)`` index: ``(M, X, ...)``.

    Through ``index_select``, whose backward (``index_add_``) sums repeated rows in a fixed order; the
    backward of ``table[index]`` (``index_put_`` with accumulation) adds them in a thread-dependent order
    on CPU, so a run with several threads would not repeat itself bit for bit.
    """
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])
