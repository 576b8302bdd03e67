"""Approximate MoL top-k as RAILS defines it (Ding & Zhai, WWW 2025): cheap candidates, exact rerank.

- **TopKPerEmbd**: for each query component ``a`` and item component ``b`` the top ``K'`` items by
  ``<f_a(q), g_b(x)>``; the union (at most ``Pq * Px * K'`` items per query) is reranked with full MoL.
- **TopKAvg**: the top ``K'`` items by ``<mean_a f_a(q), mean_b g_b(x)>`` (MoL with uniform gating, up to
  a constant), reranked with full MoL.
- **CombTopK**: the union of both candidate sets.

The TopKAvg part may take its own candidate count, ``k_prime_avg`` (default ``K'``, as in the paper): it
is one search over the mean embeddings where TopKPerEmbd makes ``Pq * Px``, so CombTopK with a moderate
``K'`` and a large ``k_prime_avg`` buys recall cheaply (see docs/mol-index.md, Benchmarks).

**The bound.** The gating weights are a convex combination, so ``phi(q, x) <= max_ab <f_a, g_b(x)> /
tau``. An item outside the TopKPerEmbd candidates has ``<f_a, g_b(x)> <= t_ab``, the ``K'``-th largest
value of component pair ``(a, b)``, for every pair, so it scores at most ``bound = max_ab t_ab / tau``.
When the ``k``-th reranked score exceeds ``bound`` (by a float-rounding margin) the result is provably
the exact top-k. This holds only when the candidate stage is exact (torch GEMM or FAISS flat): IVF and
HNSW may miss items above ``t_ab``, so with them ``exact`` is always False. TopKAvg alone gives no bound
(``exact`` is True only when ``K' >= N``).

**Exact-guaranteed mode** (``guarantee_exact=True``) reruns the queries that are not proven exact with
``K'`` doubled, until every query is proven exact; once ``P * K' >= N`` (the union could cover the
corpus) the remaining queries go to :func:`~mol_index.search.exact.exact_search`. Results then always equal
exact search.

Ties among candidates follow the exact search's rule: the smaller corpus row wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from mol_core.errors import ConfigError
from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide, Similarity
from mol_index._inputs import Exclude, check_k, exclusion_tensor
from mol_index.search.candidates import CandidateStage, StageParams
from mol_index.search.exact import exact_search, sorted_topk

__all__ = ["Algorithm", "SearchResult", "rails_search"]

#: Pairs reranked per ``score_pairs`` call (bounds the ``(B, X, Px, d)`` gather of candidate items).
_RERANK_BLOCK_PAIRS = 16384
#: The bound is compared with a margin of this many float32 rounding units per component logit.
_BOUND_ULPS = 4.0


class Algorithm(str, Enum):
    """Top-k algorithms an index can run (``SearchParams.algorithm``)."""

    EXACT = "exact"
    TOP_K_PER_EMBD = "topk_per_embd"
    TOP_K_AVG = "topk_avg"
    COMB_TOP_K = "comb_topk"
    ADAPTIVE = "adaptive"  # adaptive indexes only (mol_index.search.adaptive); rails_search refuses it
    PQ = "pq"  # pq indexes only (mol_index.search.pq); rails_search refuses it
    HIERARCHICAL = "hierarchical"  # hierarchical indexes only (mol_index.search.hierarchy)
    LINEARIZED = "linearized"  # mol_index.search.linearized; rails_search refuses it


@dataclass(frozen=True)
class SearchResult:
    """What a search found, with the diagnostics of the RAILS algorithms.

    Attributes:
        scores: ``(B, k)`` float32 scores, descending; ``-inf`` where fewer than ``k`` items remain.
        ids: ``(B, k)`` int64 ids (corpus rows from :func:`rails_search`, external item ids from an index);
            ``-1`` where fewer than ``k`` items remain.
        exact: ``(B,)`` bool, True where the result is provably the exact top-k.
        num_candidates: ``(B,)`` int64, distinct items reranked per query (``N`` for exact search).
        k_prime: ``(B,)`` int64, the ``K'`` that produced each query's result (``N`` for exact search).
    """

    scores: torch.Tensor
    ids: torch.Tensor
    exact: torch.Tensor
    num_candidates: torch.Tensor
    k_prime: torch.Tensor


def _unique_rows(candidates: torch.Tensor, num_items: int) -> torch.Tensor:
    """``(B, M)`` candidate rows (``-1`` = none) -> ``(B, X)`` distinct rows ascending, padded with ``N``."""
    rows = candidates.masked_fill(candidates < 0, num_items).sort(dim=1).values  # (B, M)
    dup = torch.zeros_like(rows, dtype=torch.bool)  # (B, M)
    dup[:, 1:] = rows[:, 1:] == rows[:, :-1]
    rows = rows.masked_fill(dup, num_items).sort(dim=1).values  # (B, M), padding last
    width = max(1, int((rows < num_items).sum(dim=1).max()))
    return rows[:, :width]  # (B, X)


def _gather(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``(N, ...)`` table rows at ``(B, x)`` indices -> ``(B, x, ...)``.

    ``index_select`` on the flattened indices rather than advanced indexing (``table[idx]``), which is
    the slower of the two on the CPU for rows scattered over a large table.
    """
    return table.index_select(0, idx.reshape(-1)).view(*idx.shape, *table.shape[1:])


def _rerank(
    similarity: Similarity,
    query: QuerySide,
    corpus: ItemSide,
    rows: torch.Tensor,
    excluded: torch.Tensor | None,
) -> torch.Tensor:
    """Exact scores of ``(B, X)`` candidate rows (padding ``N`` and excluded rows get ``-inf``)."""
    batch, width = rows.shape
    num_items = corpus.num_items
    valid = rows < num_items  # (B, X)
    safe = rows.clamp(max=num_items - 1)  # (B, X)
    from mol_index.kernels import mol_cpu

    if isinstance(similarity, MoLSimilarity) and mol_cpu.usable(similarity, query, corpus):
        scores = mol_cpu.cpu_score_gathered(similarity, query, corpus, safe)[0]  # (B, X), the fused kernel
    else:
        chunk = max(16, _RERANK_BLOCK_PAIRS // max(1, batch))
        parts = []
        for start in range(0, width, chunk):
            idx = safe[:, start : start + chunk]  # (B, x)
            gating = None if corpus.gating is None else _gather(corpus.gating, idx)  # (B, x, P)
            items = ItemSide(_gather(corpus.embeddings, idx), gating)  # (B, x, Px, d)
            parts.append(similarity.score_pairs(query, items).float())  # (B, x)
        scores = torch.cat(parts, dim=1)  # (B, X)
    invalid = ~valid
    if excluded is not None:
        # one key per (query, row) pair so a single isin call covers the whole batch
        stride = num_items + 1
        offsets = torch.arange(batch, device=rows.device).unsqueeze(1) * stride  # (B, 1)
        keys = rows + offsets  # (B, X)
        excl_keys = (excluded + offsets)[(excluded >= 0) & (excluded < num_items)]  # (E,)
        invalid |= torch.isin(keys, excl_keys)
    return scores.masked_fill(invalid, float("-inf"))


def _one_pass(
    similarity: Similarity,
    query: QuerySide,
    corpus: ItemSide,
    k: int,
    stage: CandidateStage,
    algorithm: Algorithm,
    k_prime: int,
    k_prime_avg: int,
    excluded: torch.Tensor | None,
    params: StageParams,
) -> SearchResult:
    num_items = corpus.num_items
    batch = query.batch_size
    device = query.embeddings.device
    parts = []
    bound: torch.Tensor | None = None
    if algorithm in (Algorithm.TOP_K_PER_EMBD, Algorithm.COMB_TOP_K):
        values, rows = stage.per_component(query.embeddings, k_prime, params)  # (B, Pq, Px, K')
        parts.append(rows.flatten(1))  # (B, Pq*Px*K')
        if stage.exact:
            bound = values[..., -1].flatten(1).max(dim=1).values.float() / similarity.temperature  # (B,)
    if algorithm in (Algorithm.TOP_K_AVG, Algorithm.COMB_TOP_K):
        _, rows = stage.mean(query.embeddings.mean(dim=1), k_prime_avg, params)  # (B, K'_avg)
        parts.append(rows)
    candidates = _unique_rows(torch.cat(parts, dim=1), num_items)  # (B, X)
    scores = _rerank(similarity, query, corpus, candidates, excluded)  # (B, X)
    rows_out = candidates.masked_fill(candidates >= num_items, -1)
    top_scores, top_rows = sorted_topk(scores, rows_out, k)  # (B, k)
    everything = stage.exact and k_prime >= num_items
    exact = torch.full((batch,), everything, dtype=torch.bool, device=device)
    if bound is not None and not everything:
        kth = top_scores[:, k - 1]  # (B,)
        eps = torch.finfo(torch.float32).eps
        margin = _BOUND_ULPS * similarity.num_components * eps * bound.abs().clamp_min(1.0)  # (B,)
        exact = torch.isfinite(kth) & (kth > bound + margin)
    return SearchResult(
        scores=top_scores,
        ids=top_rows,
        exact=exact,
        num_candidates=(candidates < num_items).sum(dim=1),
        k_prime=torch.full((batch,), k_prime, dtype=torch.int64, device=device),
    )


def rails_search(
    similarity: Similarity,
    query: QuerySide,
    corpus: ItemSide,
    k: int,
    stage: CandidateStage,
    *,
    algorithm: Algorithm = Algorithm.COMB_TOP_K,
    k_prime: int = 64,
    k_prime_avg: int | None = None,
    exclude: Exclude | None = None,
    guarantee_exact: bool = False,
    stage_params: StageParams | None = None,
    block_size: int | None = None,
) -> SearchResult:
    """Top-k corpus rows by a RAILS algorithm (or exact search), with a per-query exactness flag.

    Args:
        similarity: the similarity to rerank with (``eval()`` mode).
        query: ``B`` queries, embeddings ``(B, Pq, d)``.
        corpus: ``N`` items, embeddings ``(N, Px, d)``; ``stage`` must have been built over the same items.
        k: results per query, ``1 <= k <= N``.
        stage: the candidate stage (:class:`~mol_index.search.candidates.TorchStage` or ``FaissStage``).
        algorithm: which candidates to rerank; ``Algorithm.EXACT`` ignores ``stage`` and scans everything.
        k_prime: ``K'``, candidates per component pair (and for the mean); clamped to ``N``.
        k_prime_avg: candidates of the TopKAvg part (TopKAvg, CombTopK); default ``k_prime``; clamped to
            ``N``. The exact-guaranteed mode widens ``k_prime`` only.
        exclude: corpus rows to leave out per query, as for :func:`~mol_index.search.exact.exact_search`.
        guarantee_exact: widen ``K'`` (doubling) until every query is provably exact; needs an exact stage
            and an algorithm with per-component candidates (TopKPerEmbd or CombTopK).
        stage_params: FAISS search knobs (``nprobe``, ``ef_search``).
        block_size: items per block of the exact search (exact algorithm and the fallback).

    Returns:
        A :class:`SearchResult` whose ``ids`` are corpus rows.

    Raises:
        ConfigError: ``k``, ``k_prime`` or ``k_prime_avg`` out of range, or ``guarantee_exact`` with an
            approximate stage or with TopKAvg.
    """
    num_items = corpus.num_items
    check_k(k, num_items)
    batch = query.batch_size
    device = query.embeddings.device
    algorithm = Algorithm(algorithm)
    if algorithm in (Algorithm.ADAPTIVE, Algorithm.PQ, Algorithm.HIERARCHICAL):
        raise ConfigError(
            f"algorithm {algorithm.value!r} needs an index of that kind "
            f"(a MolIndex of kind {algorithm.value!r})"
        )
    if algorithm is Algorithm.LINEARIZED:
        raise ConfigError(
            "the linearized algorithm runs through mol_index.search.linearized.linearized_search"
        )
    if algorithm is Algorithm.EXACT:
        scores, rows = exact_search(similarity, query, corpus, k, exclude=exclude, block_size=block_size)
        full = torch.full((batch,), num_items, dtype=torch.int64, device=device)
        return SearchResult(scores, rows, torch.ones(batch, dtype=torch.bool, device=device), full, full)
    if isinstance(k_prime, bool) or not isinstance(k_prime, int) or k_prime < 1:
        raise ConfigError(f"k_prime must be a positive integer; got {k_prime!r}")
    if k_prime_avg is None:
        k_prime_avg = k_prime
    if isinstance(k_prime_avg, bool) or not isinstance(k_prime_avg, int) or k_prime_avg < 1:
        raise ConfigError(f"k_prime_avg must be a positive integer; got {k_prime_avg!r}")
    if guarantee_exact and not stage.exact:
        raise ConfigError(
            "guarantee_exact needs an exact candidate stage (torch or FAISS flat): IVF and HNSW may miss "
            "items, so the bound proves nothing; build the index with stage='torch' or 'flat'"
        )
    if guarantee_exact and algorithm is Algorithm.TOP_K_AVG:
        raise ConfigError("guarantee_exact needs per-component candidates: use topk_per_embd or comb_topk")
    params = stage_params or StageParams()
    excluded = exclusion_tensor(exclude, batch)
    if excluded is not None:
        excluded = excluded.to(device)
    k_prime = min(k_prime, num_items)
    k_prime_avg = min(k_prime_avg, num_items)
    result = _one_pass(similarity, query, corpus, k, stage, algorithm, k_prime, k_prime_avg, excluded, params)
    if not guarantee_exact:
        return result
    scores, ids, exact = result.scores.clone(), result.ids.clone(), result.exact.clone()
    n_cand, used = result.num_candidates.clone(), result.k_prime.clone()
    while not bool(exact.all()):
        pending = (~exact).nonzero().squeeze(1)  # (B',)
        sub_query = QuerySide(
            query.embeddings[pending], None if query.gating is None else query.gating[pending]
        )
        sub_excluded = None if excluded is None else excluded[pending]
        k_prime = min(2 * k_prime, num_items)
        if similarity.num_components * k_prime >= num_items:
            # the union could cover the whole corpus, and reranking gathered candidates costs more per
            # item than the blockwise scan: scan instead
            s, r = exact_search(similarity, sub_query, corpus, k, exclude=sub_excluded, block_size=block_size)
            sub = SearchResult(
                s,
                r,
                torch.ones(len(pending), dtype=torch.bool, device=device),
                torch.full((len(pending),), num_items, dtype=torch.int64, device=device),
                torch.full((len(pending),), num_items, dtype=torch.int64, device=device),
            )
        else:
            sub = _one_pass(
                similarity, sub_query, corpus, k, stage, algorithm, k_prime, k_prime_avg, sub_excluded, params
            )
        scores[pending], ids[pending], exact[pending] = sub.scores, sub.ids, sub.exact
        n_cand[pending], used[pending] = sub.num_candidates, sub.k_prime
    return SearchResult(scores, ids, exact, n_cand, used)
