"""The AXN model of an ``adaptive`` index: item embeddings and a query map learned from a similarity's
scores (:func:`build_adaptive_model`), and the search that spends a scorer-call budget with it
(:func:`search_adaptive_model`), on top of the algorithm in :mod:`mol_index.search.adaptive`.

Shapes: ``Q`` training queries, ``N`` items, ``r`` embedding width, ``B`` queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index.search.adaptive import (
    AdaptiveResult,
    Scorer,
    adaptive_search,
    factorize,
    fit_query_map,
    sparse_score_matrix,
)

__all__ = ["AdaptiveModel", "build_adaptive_model", "search_adaptive_model", "similarity_scorer"]


@dataclass(frozen=True)
class AdaptiveModel:
    """The learned part of an ``adaptive`` index over a MoL corpus (see :func:`build_adaptive_model`).

    The dual encoder is the mean query component against the mean item component (the embedding TopKAvg
    uses), so it needs no extra storage.

    Attributes:
        items: ``(N, r)`` factorized item embeddings.
        query_map: ``(d, r)`` from mean query components into the factorized space.
        rmse: the factorization's error on the observed training scores.
    """

    items: torch.Tensor
    query_map: torch.Tensor
    rmse: float

    def to(self, device: torch.device | str) -> AdaptiveModel:
        """A copy on ``device``."""
        return AdaptiveModel(self.items.to(device), self.query_map.to(device), self.rmse)


def similarity_scorer(similarity: Similarity, queries: QuerySide, corpus: ItemSide) -> Scorer:
    """The exact similarity of ``queries[handles]`` and ``corpus[rows]`` as a :data:`Scorer`."""

    def score(handles: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        gating = None if queries.gating is None else queries.gating[handles]
        items = ItemSide(corpus.embeddings[rows], None if corpus.gating is None else corpus.gating[rows])
        with torch.inference_mode():
            return similarity.score_pairs(QuerySide(queries.embeddings[handles], gating), items).float()

    return score


def build_adaptive_model(
    similarity: Similarity,
    corpus: ItemSide,
    train_queries: QuerySide,
    *,
    per_query: int = 100,
    reg: float = 1000.0,
    iterations: int = 10,
) -> AdaptiveModel:
    """Scores each training query against its top ``per_query`` items by the mean-component dual encoder,
    factorizes the sparse matrix (items pulled towards their dual embeddings with strength ``reg``) and fits
    the query map.

    Args:
        similarity: the expensive scorer's similarity (eval mode).
        corpus: ``(N, Px, d)`` item side.
        train_queries: ``Q`` training queries, ``(Q, Pq, d)`` (+ gating), drawn like real queries.
        per_query: ``m``, scored items per training query.
        reg: ridge strength of the factorization and the query map, > 0.
        iterations: ALS sweeps.

    Raises:
        ConfigError: ``per_query`` not in ``[1, N]`` or bad ``reg`` / ``iterations``.
    """
    dual_items = corpus.embeddings.float().mean(1)  # (N, d)
    dual_queries = train_queries.embeddings.float().mean(1)  # (Q, d)
    scorer = similarity_scorer(similarity, train_queries, corpus)
    handles = torch.arange(train_queries.batch_size)
    rows, scores = sparse_score_matrix(scorer, handles, dual_queries, dual_items, per_query=per_query)
    items, factors, rmse = factorize(rows, scores, dual_items, dual_queries, reg=reg, iterations=iterations)
    return AdaptiveModel(items, fit_query_map(dual_queries, factors, reg=reg), rmse)


def search_adaptive_model(
    similarity: Similarity,
    query: QuerySide,
    corpus: ItemSide,
    model: AdaptiveModel,
    k: int,
    *,
    budget: int,
    rounds: int,
    reg: float = 0.1,
    exclude: torch.Tensor | None = None,
) -> AdaptiveResult:
    """:func:`adaptive_search` with the similarity as the scorer: the first round by the dual encoder,
    then rounds in the factorized space starting from the mapped dual query."""
    dual = query.embeddings.float().mean(1)  # (B, d)
    return adaptive_search(
        similarity_scorer(similarity, query, corpus),
        torch.arange(query.batch_size, device=dual.device),
        dual @ model.query_map,
        model.items,
        k,
        budget=budget,
        rounds=rounds,
        reg=reg,
        exclude=exclude,
        start_items=corpus.embeddings.float().mean(1),
        start_queries=dual,
    )
