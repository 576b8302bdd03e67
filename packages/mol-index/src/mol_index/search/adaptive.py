"""Adaptive retrieval for expensive scorers (AXN: Yadav et al., ICLR 2024), by sparse matrix factorization.

For a scorer too costly to run over the whole corpus (MoL with a large gating network, a cross-encoder),
given as a callable on (query handles, item rows):

- **Offline** (:func:`sparse_score_matrix`, :func:`factorize`): score each training query against its
  top ``m`` items under a cheap dual encoder, giving a sparse ``Q x N`` score matrix, and factorize it into
  item embeddings ``V (N, r)`` (and training-query embeddings) by alternating ridge least squares, with
  the items pulled towards their dual-encoder embeddings (the initialisation). No dense score matrix is
  built and nothing is distilled.
- **Online** (:func:`adaptive_search`): in rounds, retrieve the best unscored items by the current query
  embedding ``u``, score them with the expensive scorer, re-fit ``u`` by ridge least squares on every
  score seen so far (pulled towards the query's dual-encoder embedding), retrieve more; return the best
  items by true score.

Shapes: ``Q`` training queries, ``N`` items, ``r`` embedding width, ``B`` queries, ``m`` scored items per
training query, ``M`` items scored per query and round.

    from mol_index.search.adaptive import adaptive_search, factorize, sparse_score_matrix
    rows, scores = sparse_score_matrix(scorer, train_handles, train_dual, item_dual, per_query=100)
    items, _, _ = factorize(rows, scores, item_dual, train_dual, reg=0.1, iterations=10)
    result = adaptive_search(scorer, handles, query_dual, items, k=10, budget=200, rounds=5)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mol_core.errors import ConfigError, ShapeError

__all__ = [
    "AdaptiveResult",
    "Scorer",
    "adaptive_search",
    "factorize",
    "fit_query_map",
    "sparse_score_matrix",
]

#: ``scorer(query_handles (B,) int64, item_rows (B, M) int64) -> (B, M) float scores``: the expensive
#: similarity of query ``query_handles[b]`` and corpus rows ``item_rows[b]``.
Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_ENTRY_CHUNK = 4096  # observed entries per outer-product chunk of the item step


@dataclass(frozen=True)
class AdaptiveResult:
    """What :func:`adaptive_search` returned.

    Attributes:
        scores: ``(B, k)`` true scores, descending; ``-inf`` where fewer than ``k`` items were scored.
        rows: ``(B, k)`` corpus rows; ``-1`` where fewer than ``k`` items were scored.
        scorer_calls: ``(B,)`` (query, item) pairs each query sent to the scorer.
    """

    scores: torch.Tensor
    rows: torch.Tensor
    scorer_calls: torch.Tensor


def _check_2d(name: str, value: torch.Tensor, width: int | None = None) -> None:
    if value.dim() != 2 or (width is not None and value.shape[1] != width):
        want = f"(*, {width})" if width is not None else "a 2-d tensor"
        raise ShapeError(f"{name} must be {want}; got shape {tuple(value.shape)}")


def sparse_score_matrix(
    scorer: Scorer,
    query_handles: torch.Tensor,
    dual_queries: torch.Tensor,
    dual_items: torch.Tensor,
    *,
    per_query: int,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores each training query against its top ``per_query`` items by the dual encoder.

    Args:
        scorer: the expensive scorer (see :data:`Scorer`).
        query_handles: ``(Q,)`` int64 handles the scorer understands (e.g. training query indices).
        dual_queries: ``(Q, r)`` dual-encoder query embeddings.
        dual_items: ``(N, r)`` dual-encoder item embeddings.
        per_query: ``m``, items scored per training query (``1 <= m <= N``).
        batch_size: training queries per scorer call.

    Returns:
        ``(rows (Q, m) int64, scores (Q, m) float32)``: the observed entries of the sparse matrix.

    Raises:
        ShapeError: inconsistent shapes. ConfigError: ``per_query`` out of range.
    """
    _check_2d("dual_items", dual_items)
    _check_2d("dual_queries", dual_queries, dual_items.shape[1])
    if query_handles.shape != (dual_queries.shape[0],):
        raise ShapeError(
            f"query_handles must have shape (Q={dual_queries.shape[0]},); got {tuple(query_handles.shape)}"
        )
    num_items = dual_items.shape[0]
    if not 1 <= per_query <= num_items:
        raise ConfigError(f"per_query must be in [1, N={num_items}]; got {per_query}")
    rows, scores = [], []
    for start in range(0, dual_queries.shape[0], batch_size):
        block = dual_queries[start : start + batch_size] @ dual_items.T  # (b, N)
        top = torch.topk(block, per_query, dim=1).indices  # (b, m)
        rows.append(top)
        scores.append(scorer(query_handles[start : start + batch_size], top).float())
    return torch.cat(rows), torch.cat(scores)


def _ridge(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solves ``gram @ x = rhs`` for a batch of symmetric positive definite ``(*, r, r)`` systems."""
    solution: torch.Tensor = torch.linalg.solve(gram, rhs.unsqueeze(-1))
    return solution.squeeze(-1)


def factorize(
    rows: torch.Tensor,
    scores: torch.Tensor,
    init_items: torch.Tensor,
    init_queries: torch.Tensor,
    *,
    reg: float = 0.1,
    iterations: int = 10,
    item_block: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Alternating ridge least squares on the observed entries of a sparse ``Q x N`` score matrix.

    Minimises ``sum_(q,i) observed (s_qi - <u_q, v_i>)^2 + reg * (|U - U0|^2 + |V - V0|^2)``, where
    ``U0``/``V0`` are the dual-encoder embeddings; items no training query scored keep ``V0``.

    Args:
        rows: ``(Q, m)`` int64 observed item rows per training query.
        scores: ``(Q, m)`` their scores.
        init_items: ``(N, r)`` item embeddings to start from and regularise towards.
        init_queries: ``(Q, r)`` training-query embeddings likewise.
        reg: ridge strength, > 0.
        iterations: ALS sweeps (each one query step and one item step).
        item_block: items whose ``(r, r)`` normal equations are built at once (memory ``block * r^2``).

    Returns:
        ``(items (N, r), queries (Q, r), rmse)``, the rmse over the observed entries after the last sweep.

    Raises:
        ShapeError: inconsistent shapes. ConfigError: ``reg <= 0`` or ``iterations < 1``.
    """
    _check_2d("init_items", init_items)
    width = init_items.shape[1]
    _check_2d("init_queries", init_queries, width)
    _check_2d("rows", rows)
    if scores.shape != rows.shape or rows.shape[0] != init_queries.shape[0]:
        raise ShapeError(
            f"rows and scores must both be (Q={init_queries.shape[0]}, m); got {tuple(rows.shape)} and "
            f"{tuple(scores.shape)}"
        )
    if not reg > 0 or iterations < 1:
        raise ConfigError(f"reg must be > 0 and iterations >= 1; got reg={reg}, iterations={iterations}")
    items0, queries0 = init_items.float(), init_queries.float()
    items, queries = items0.clone(), queries0.clone()
    eye = reg * torch.eye(width)
    flat_rows = rows.reshape(-1)  # (Q*m,)
    flat_queries = torch.arange(rows.shape[0]).repeat_interleave(rows.shape[1])  # (Q*m,)
    flat_scores = scores.reshape(-1).float()
    order = torch.argsort(flat_rows)
    sorted_rows = flat_rows[order]
    for _ in range(iterations):
        gathered = items[rows]  # (Q, m, r)
        gram = gathered.transpose(1, 2) @ gathered + eye  # (Q, r, r)
        rhs = (gathered * scores.float().unsqueeze(-1)).sum(1) + reg * queries0  # (Q, r)
        queries = _ridge(gram, rhs)
        for start in range(0, items.shape[0], item_block):
            stop = min(start + item_block, items.shape[0])
            lo, hi = torch.searchsorted(sorted_rows, torch.tensor([start, stop])).tolist()
            if lo == hi:
                continue
            block_gram = eye.expand(stop - start, width, width).clone()  # (n, r, r)
            block_rhs = reg * items0[start:stop].clone()  # (n, r)
            for chunk in range(lo, hi, _ENTRY_CHUNK):  # bounds the (E, r, r) outer products
                picks = order[chunk : min(chunk + _ENTRY_CHUNK, hi)]
                local = flat_rows[picks] - start  # (E,)
                u = queries[flat_queries[picks]]  # (E, r)
                block_gram.index_add_(0, local, u.unsqueeze(2) * u.unsqueeze(1))
                block_rhs.index_add_(0, local, u * flat_scores[picks].unsqueeze(1))
            touched = torch.unique(flat_rows[order[lo:hi]]) - start
            items[start + touched] = _ridge(block_gram[touched], block_rhs[touched])
    predicted = (queries.unsqueeze(1) * items[rows]).sum(-1)  # (Q, m)
    rmse = float(((predicted - scores.float()) ** 2).mean().sqrt())
    return items, queries, rmse


def fit_query_map(
    dual_queries: torch.Tensor, factorized_queries: torch.Tensor, *, reg: float = 1.0
) -> torch.Tensor:
    """``W (r0, r)`` mapping dual-encoder query embeddings into the factorized space (ridge regression on
    the training queries), so that new queries start from ``dual @ W`` (see :func:`adaptive_search`).

    Args:
        dual_queries: ``(Q, r0)`` training queries' dual-encoder embeddings.
        factorized_queries: ``(Q, r)`` their embeddings from :func:`factorize`.
        reg: ridge strength, > 0.
    """
    _check_2d("dual_queries", dual_queries)
    _check_2d("factorized_queries", factorized_queries)
    if dual_queries.shape[0] != factorized_queries.shape[0] or not reg > 0:
        raise ShapeError(
            f"need the same Q rows and reg > 0; got {tuple(dual_queries.shape)}, "
            f"{tuple(factorized_queries.shape)}, reg={reg}"
        )
    x = dual_queries.float()
    gram = x.T @ x + reg * torch.eye(x.shape[1])
    mapping: torch.Tensor = torch.linalg.solve(gram, x.T @ factorized_queries.float())
    return mapping


def adaptive_search(
    scorer: Scorer,
    query_handles: torch.Tensor,
    init_queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    *,
    budget: int,
    rounds: int = 5,
    reg: float = 0.1,
    exclude: torch.Tensor | None = None,
    start_items: torch.Tensor | None = None,
    start_queries: torch.Tensor | None = None,
) -> AdaptiveResult:
    """Top ``k`` items by the scorer for each query, with at most ``budget`` scorer calls per query.

    Round ``t`` retrieves the ``budget // rounds`` best unscored items by ``<u, v_i>`` (the first round also
    gets the remainder), scores them, and re-fits ``u = argmin sum_seen (s_i - <u, v_i>)^2 +
    reg * |u - u0|^2``. The answer is the best ``k`` scored items by true score.

    Args:
        scorer: the expensive scorer (see :data:`Scorer`).
        query_handles: ``(B,)`` int64 handles the scorer understands.
        init_queries: ``(B, r)`` starting query embeddings ``u0`` (the dual encoder's).
        items: ``(N, r)`` item embeddings (from :func:`factorize`).
        k: results per query, ``1 <= k <= budget``.
        budget: scorer calls per query, ``k <= budget <= N``.
        rounds: retrieve-score-refit rounds, ``1 <= rounds <= budget``.
        reg: ridge strength of the query refit, > 0.
        exclude: ``(B, L)`` int64 corpus rows never to return or score (``-1`` padding), or ``None``.
        start_items: ``(N, r0)`` item embeddings of another space (the dual encoder's) for the first round,
            which then retrieves by ``start_queries @ start_items.T``; later rounds and the refits use
            ``items`` and ``init_queries`` (e.g. mapped by :func:`fit_query_map`). ``None``: the first round
            retrieves by ``init_queries @ items.T``.
        start_queries: ``(B, r0)`` query embeddings in the ``start_items`` space (required with it).

    Raises:
        ShapeError: inconsistent shapes. ConfigError: ``k``, ``budget``, ``rounds`` or ``reg`` out of range
        (a budget below one item per round, for instance).
    """
    _check_2d("items", items)
    num_items, width = items.shape
    batch = init_queries.shape[0]
    if query_handles.shape != (batch,):
        raise ShapeError(f"query_handles must have shape (B={batch},); got {tuple(query_handles.shape)}")
    if not 1 <= k <= budget <= num_items:
        raise ConfigError(f"need 1 <= k <= budget <= N; got k={k}, budget={budget}, N={num_items}")
    if not 1 <= rounds <= budget:
        raise ConfigError(
            f"rounds must be in [1, budget={budget}] (at least one scorer call per round); got {rounds}"
        )
    if not reg > 0:
        raise ConfigError(f"reg must be > 0; got {reg}")
    items = items.float()
    _check_2d("init_queries", init_queries, width)
    first_scores = None
    if start_items is not None:
        if start_items.shape[0] != num_items or start_items.dim() != 2:
            raise ShapeError(f"start_items must be (N={num_items}, r0); got {tuple(start_items.shape)}")
        if start_queries is None:
            raise ShapeError("start_items needs start_queries, the (B, r0) queries of that space")
        _check_2d("start_queries", start_queries, start_items.shape[1])
        first_scores = start_queries.float() @ start_items.float().T  # (B, N)
    u0 = init_queries.float()
    u = u0.clone()
    device = items.device
    blocked = torch.zeros(batch, num_items, dtype=torch.bool, device=device)  # scored or excluded
    if exclude is not None:
        _check_2d("exclude", exclude)
        valid = (exclude >= 0) & (exclude < num_items)
        exclude = exclude.to(device)
        b_idx = torch.arange(batch, device=device).unsqueeze(1).expand_as(exclude)
        blocked[b_idx[valid], exclude[valid]] = True
    seen_rows: list[torch.Tensor] = []
    seen_scores: list[torch.Tensor] = []
    calls = torch.zeros(batch, dtype=torch.int64, device=device)
    eye = reg * torch.eye(width, device=device)
    per_round = budget // rounds
    for round_index in range(rounds):
        take = per_round + (budget - per_round * rounds if round_index == 0 else 0)
        raw = first_scores if (round_index == 0 and first_scores is not None) else u @ items.T  # (B, N)
        ranking = raw.masked_fill(blocked, float("-inf"))
        top = torch.topk(ranking, take, dim=1)
        rows = top.indices  # (B, M)
        live = torch.isfinite(top.values)  # (B, M): False once a query has nothing left to score
        safe_rows = torch.where(live, rows, torch.zeros_like(rows))
        scored = scorer(query_handles, safe_rows).float().masked_fill(~live, float("-inf"))  # (B, M)
        calls += live.sum(1)
        blocked.scatter_(1, rows, True)
        seen_rows.append(torch.where(live, rows, torch.full_like(rows, -1)))
        seen_scores.append(scored)
        if round_index == rounds - 1:
            break
        all_rows = torch.cat(seen_rows, 1)  # (B, S)
        all_scores = torch.cat(seen_scores, 1)
        mask = (all_rows >= 0).float().unsqueeze(-1)  # (B, S, 1)
        vecs = items[all_rows.clamp_min(0)] * mask  # (B, S, r)
        targets = torch.where(all_rows >= 0, all_scores, torch.zeros_like(all_scores))
        gram = vecs.transpose(1, 2) @ vecs + eye  # (B, r, r)
        rhs = (vecs * targets.unsqueeze(-1)).sum(1) + reg * u0
        u = _ridge(gram, rhs)
    all_rows, all_scores = torch.cat(seen_rows, 1), torch.cat(seen_scores, 1)
    best = torch.topk(all_scores, k, dim=1)
    rows_out = all_rows.gather(1, best.indices)
    rows_out = torch.where(torch.isfinite(best.values), rows_out, torch.full_like(rows_out, -1))
    return AdaptiveResult(best.values, rows_out, calls)
