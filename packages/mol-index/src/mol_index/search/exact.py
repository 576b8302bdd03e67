"""Exact top-k under any :class:`~mol_core.similarity.Similarity`: the ground truth of every index.

The corpus is scored ``block_size`` items at a time with :meth:`Similarity.score_pairs`, and each block's
scores are merged into a running top-k, so memory is bounded by the block: ``(B, block, P)`` logits and
``(B, block + k)`` scores, never ``(B, N, P)`` nor ``(B, N)``.

**Tie rule.** Among equal scores the item with the smaller corpus row wins (row = position in the
corpus, ``0 .. N-1``); results are sorted by score, descending, then by row, ascending. The rule is the
same for every block size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from mol_core.errors import ConfigError, ShapeError
from mol_core.similarity import DEFAULT_BLOCK_PAIRS, ItemSide, QuerySide, Similarity
from mol_index._inputs import Exclude, check_k, exclusion_tensor

__all__ = [
    "blockwise_topk",
    "check_exact_inputs",
    "exact_search",
    "merge_topk",
    "sorted_topk",
    "topk_any_order",
]

#: Blocks at least this many times wider than k are merged by selection (topk) rather than a full sort.
_SELECT_FIRST = 16


def sorted_topk(scores: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of each row by score (descending), ties by position (ascending), with ``-1`` padding.

    Args:
        scores: ``(B, M)`` float scores; ``-inf`` marks a slot that holds no item.
        rows: ``(B, M)`` int64 corpus rows, ordered so that, among equal scores, the earlier slot has the
            smaller row (then a stable sort implements the tie rule).
        k: results to keep; when ``M < k`` the output is padded.

    Returns:
        ``(scores, rows)`` of shape ``(B, k)``; empty slots have score ``-inf`` and row ``-1``.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # (B, min(M, k))
    top_scores = scores.gather(1, order)  # (B, min(M, k))
    top_rows = rows.gather(1, order)  # (B, min(M, k))
    top_rows = torch.where(torch.isneginf(top_scores), torch.full_like(top_rows, -1), top_rows)
    missing = k - top_scores.shape[1]
    if missing > 0:
        batch = scores.shape[0]
        fill = torch.full((batch, missing), float("-inf"), dtype=top_scores.dtype, device=scores.device)
        top_scores = torch.cat([top_scores, fill], dim=1)  # (B, k)
        top_rows = torch.cat([top_rows, torch.full_like(fill, -1, dtype=torch.int64)], dim=1)  # (B, k)
    return top_scores, top_rows


def topk_any_order(scores: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sorted_topk` for slots whose rows are in any order: the same result, ties to the smaller row.

    Keeps only the slots that can be in the top-k (score at least the ``k``-th largest, ties included),
    then sorts those few by row and applies :func:`sorted_topk`, so no sort runs over all ``M`` slots.

    Args:
        scores: ``(B, M)`` float scores; ``-inf`` marks a slot that holds no item.
        rows: ``(B, M)`` int64 corpus rows, any order, distinct within a row of the batch.
        k: results to keep.

    Returns:
        ``(scores, rows)`` of shape ``(B, k)``, as :func:`sorted_topk` returns them.
    """
    batch, width = scores.shape
    if width > k:
        kth = scores.topk(k, dim=1).values[:, -1:]  # (B, 1)
        keep = scores >= kth  # (B, M): at least k per row
        kept = int(keep.sum(dim=1).max())
        if kept < width:
            position = torch.where(keep, torch.cumsum(keep, dim=1) - 1, kept)  # (B, M); kept = the dump slot
            packed_scores = torch.full(
                (batch, kept + 1), float("-inf"), dtype=scores.dtype, device=scores.device
            )
            packed_rows = torch.full((batch, kept + 1), -1, dtype=rows.dtype, device=rows.device)
            packed_scores.scatter_(1, position, scores)
            packed_rows.scatter_(1, position, rows)
            scores, rows = packed_scores[:, :kept], packed_rows[:, :kept]  # (B, kept)
            scores = scores.masked_fill(rows < 0, float("-inf"))
    missing = rows < 0
    order = rows.masked_fill(missing, torch.iinfo(rows.dtype).max).argsort(dim=1, stable=True)  # (B, M')
    return sorted_topk(scores.gather(1, order), rows.gather(1, order), k)


def merge_topk(
    running: tuple[torch.Tensor, torch.Tensor], block: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merges a block's scores into a running top-k; the block's rows must all exceed the running ones.

    Args:
        running: ``(B, k)`` scores and rows, sorted as :func:`sorted_topk` returns them.
        block: ``(B, n)`` scores and rows of the next block, rows ascending along each row.
        k: results to keep.

    Returns:
        The new ``(B, k)`` running top-k.
    """
    scores = torch.cat([running[0], block[0]], dim=1)  # (B, k + n)
    rows = torch.cat([running[1], block[1]], dim=1)  # (B, k + n)
    return sorted_topk(scores, rows, k)


def mask_excluded(scores: torch.Tensor, excluded: torch.Tensor | None, start: int) -> torch.Tensor:
    """Sets ``scores[b, j] = -inf`` where row ``start + j`` is excluded for query ``b`` (in place).

    Args:
        scores: ``(B, n)`` scores of rows ``start .. start + n - 1``.
        excluded: ``(B, L)`` excluded rows per query, ``-1`` padding, or ``None``.
        start: the row of ``scores[:, 0]``.
    """
    if excluded is None:
        return scores
    rel = excluded - start  # (B, L)
    hit = (excluded >= 0) & (rel >= 0) & (rel < scores.shape[1])  # (B, L)
    if bool(hit.any()):
        batch_idx = torch.arange(scores.shape[0], device=scores.device).unsqueeze(1).expand_as(rel)
        scores[batch_idx[hit], rel[hit]] = float("-inf")
    return scores


def exact_search(
    similarity: Similarity,
    query: QuerySide,
    corpus: ItemSide,
    k: int,
    *,
    exclude: Exclude | None = None,
    block_size: int | None = None,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k corpus rows for each query, blockwise, with a running top-k.

    Args:
        similarity: scores (query, item) pairs; put it in ``eval()`` mode for deterministic scores.
        query: ``B`` queries, embeddings ``(B, Pq, d)``.
        corpus: ``N`` items, embeddings ``(N, Px, d)``.
        k: results per query, ``1 <= k <= N``.
        exclude: corpus rows to leave out per query (e.g. the query's history): a ``(B, L)`` int tensor
            padded with ``-1`` or ``B`` lists of rows. Rows outside ``[0, N)`` are ignored.
        block_size: items scored at a time; by default ``max(16, DEFAULT_BLOCK_PAIRS // B)`` (about 4,096
            query-item pairs per block). Peak memory is about ``B * block_size * (P + hidden)`` floats.
        compute_dtype: ``None`` / ``torch.float32`` (default), or ``torch.bfloat16``: the scores are
            computed under ``torch.autocast`` in bf16 (matrix products in bf16, softmax and sums in
            float32, as autocast's policy puts them), then ranked in float32. Fast only where the device
            multiplies bf16 natively (CUDA; CPUs with AVX512-BF16 or AMX); elsewhere it is emulated and
            slower than float32. It can change the ranking: its recall against float32 is measured by
            ``benchmarks/bench_exact_kernels.py``.

    Returns:
        ``(scores, rows)``: ``(B, k)`` float32 scores, descending, and ``(B, k)`` int64 corpus rows; when
        fewer than ``k`` items remain after exclusion the tail holds score ``-inf`` and row ``-1``. Ties
        go to the smaller row.

    Raises:
        ConfigError: ``k`` is not in ``[1, N]``, ``block_size`` is not a positive integer, or
            ``compute_dtype`` is another dtype.
        ShapeError: the query or corpus does not fit the similarity, or ``exclude`` has the wrong shape.

    Example:
        >>> sim = MoLSimilarity(query_input_dim=16, item_input_dim=16).eval()
        >>> corpus = sim.item_side(torch.randn(1000, 16))               # (N=1000, Px=4, d=64)
        >>> query = sim.query_side(torch.randn(2, 16))                  # (B=2, Pq=8, d=64)
        >>> scores, rows = exact_search(sim, query, corpus, 10, exclude=[[3, 7], []])
        >>> scores.shape, rows.shape
        (torch.Size([2, 10]), torch.Size([2, 10]))
    """
    excluded = check_exact_inputs(similarity, query, corpus, k, exclude)
    batch = query.batch_size
    if block_size is None:
        block_size = max(16, DEFAULT_BLOCK_PAIRS // max(1, batch))
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be a positive integer; got {block_size!r}")
    if compute_dtype not in (None, torch.float32, torch.bfloat16):
        raise ConfigError(
            f"compute_dtype must be None, torch.float32 or torch.bfloat16; got {compute_dtype!r}"
        )
    bf16 = compute_dtype == torch.bfloat16
    device_type = query.embeddings.device.type

    def score_block(start: int, stop: int) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            return similarity.score_pairs(query, corpus.slice(start, stop)).float()

    return blockwise_topk(
        score_block,
        corpus.num_items,
        batch,
        k,
        excluded,
        block_size,
        device=query.embeddings.device,
    )


def check_exact_inputs(
    similarity: Similarity, query: QuerySide, corpus: ItemSide, k: int, exclude: Exclude | None
) -> torch.Tensor | None:
    """Checks an exact search's inputs as :func:`exact_search` documents them; returns the ``(B, L)``
    exclusion tensor on the query's device (``-1`` padding) or ``None``.

    Raises:
        ConfigError, ShapeError: as :func:`exact_search`.
    """
    if corpus.embeddings.dim() != 3:
        raise ShapeError(
            f"corpus embeddings must have shape (N, Px, d); got {tuple(corpus.embeddings.shape)}"
        )
    check_k(k, corpus.num_items)
    similarity.check_corpus_inputs(query, corpus)
    excluded = exclusion_tensor(exclude, query.batch_size)
    return None if excluded is None else excluded.to(query.embeddings.device)


def blockwise_topk(
    score_block: Callable[[int, int], torch.Tensor],
    num_items: int,
    batch: int,
    k: int,
    excluded: torch.Tensor | None,
    block_size: int,
    *,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-k over ``score_block(start, stop)``, the ``(B, stop - start)`` float32 scores of
    corpus rows ``start .. stop - 1``, called for consecutive blocks of ``block_size`` rows; excluded rows
    (``(B, L)``, ``-1`` padding) are masked. Returns :func:`exact_search`'s ``(scores, rows)``.
    """
    running = (
        torch.full((batch, k), float("-inf"), dtype=torch.float32, device=device),  # (B, k)
        torch.full((batch, k), -1, dtype=torch.int64, device=device),  # (B, k)
    )
    for start in range(0, num_items, block_size):
        stop = min(start + block_size, num_items)
        scores = mask_excluded(score_block(start, stop), excluded, start)  # (B, n)
        if not bool((scores > running[0][:, -1:]).any()):
            continue  # nothing beats a k-th score (ties go to the earlier, smaller row): skip the merge
        rows = torch.arange(start, stop, device=device).unsqueeze(0).expand(batch, -1)  # (B, n)
        if stop - start >= _SELECT_FIRST * k:  # a wide block: select, then sort the few kept
            running = topk_any_order(torch.cat([running[0], scores], 1), torch.cat([running[1], rows], 1), k)
        else:
            running = merge_topk(running, (scores, rows), k)
    return running
