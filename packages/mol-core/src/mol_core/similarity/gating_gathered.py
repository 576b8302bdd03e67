"""Training-time MoL scores of query rows against candidates of their own, gathered from a table of items.

Training with per-position negatives gives every query row ``X`` candidates of its own, drawn from the
``U`` distinct items of the batch. Gathering their components for every row up front makes an
``(M, X, Px, d)`` tensor of hundreds of MB, and the plain path then streams the ``(M, X, P)`` logits, the
pair-wise MLP's hidden layer and their gradients through memory as separate tensors.

:func:`mol_scores_gathered` runs one autograd function over blocks of rows. Per block it gathers the rows'
candidates from the table, and the compiled block functions of
:mod:`~mol_core.similarity.gating_grouped` (in their per-row form: one small GEMM per row) compute the
scores, keep the activations backward needs, and compute every gradient of the block from them; the
candidates' gradients are added into the table's rows in a fixed order (``index_add_``), so repeated
candidates sum the same way on any thread count.

Shape symbols: M query rows, X candidates per row, U table rows, Pq/Px components, P = Pq * Px, d component
width, H hidden units of the pair-wise gating MLP.
"""

from __future__ import annotations

from typing import Any

import torch

from mol_core.errors import ShapeError
from mol_core.similarity.base import gather_rows
from mol_core.similarity.gating_grouped import _compiled, _rows_dynamic, keep_mask

__all__ = ["mol_scores_gathered"]

#: (row, candidate) pairs per block: a block's gathered candidates (pairs x Px x d floats) and its
#: (pairs, H) hidden layer then stay within a core's caches.
BLOCK_PAIRS = 2048


def _row_blocks(rows: int, num_x: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the blocks of rows, at most ``BLOCK_PAIRS / X`` rows each."""
    step = max(1, BLOCK_PAIRS // max(1, num_x))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _gathered_block(
    table: torch.Tensor, table_gating: torch.Tensor, index: torch.Tensor
) -> list[torch.Tensor]:
    """A block's ``(n, X, Px, d)`` candidates and ``(n, X, P)`` gating features, their row count dynamic."""
    return _rows_dynamic(gather_rows(table, index), gather_rows(table_gating, index))


class _GatheredMoL(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        queries: torch.Tensor,
        query_gating: torch.Tensor,
        table: torch.Tensor,
        table_gating: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        index: torch.Tensor,
        inv_tau: float,
        dropout: float,
        mlp_dtype: torch.dtype,
    ) -> torch.Tensor:
        forward_fn, _ = _compiled()
        rows, num_x = index.shape
        num_p = query_gating.shape[1]
        keep = keep_mask((rows, num_x, num_p), dropout, queries.device)
        weights = [w.to(mlp_dtype) for w in (w1, b1, w2, b2)]
        scores = torch.empty(rows, num_x, dtype=torch.float32, device=queries.device)
        activations = []
        for start, stop in _row_blocks(rows, num_x):
            block = _rows_dynamic(queries[start:stop], query_gating[start:stop], keep[start:stop])
            items = _gathered_block(table, table_gating, index[start:stop])
            out, logits, hidden_pre, gate_logits = forward_fn(
                block[0], block[1], items[0], items[1], block[2], *weights, inv_tau
            )
            scores[start:stop] = out
            activations.append((logits, hidden_pre, gate_logits))
        ctx.save_for_backward(queries, query_gating, table, table_gating, w1, b1, w2, b2, index, scores, keep)
        ctx.activations = activations
        ctx.inv_tau, ctx.mlp_dtype = inv_tau, mlp_dtype
        return scores

    @staticmethod
    def backward(ctx: Any, grad_scores: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        _, backward_fn = _compiled()
        queries, query_gating, table, table_gating, w1, b1, w2, b2, index, scores, keep = ctx.saved_tensors
        w1_mlp, w2_mlp = w1.to(ctx.mlp_dtype), w2.to(ctx.mlp_dtype)
        grad_scores = grad_scores.float().contiguous()
        inputs = (queries, query_gating, table, table_gating, w1, b1, w2, b2)
        grads = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in inputs]
        grad_q, grad_qg, grad_table, grad_table_gating = grads[:4]
        blocks = _row_blocks(*index.shape)
        for (start, stop), saved in zip(blocks, ctx.activations, strict=True):
            block = _rows_dynamic(
                queries[start:stop],
                query_gating[start:stop],
                keep[start:stop],
                grad_scores[start:stop],
                scores[start:stop],
            )
            rows_index = index[start:stop].reshape(-1)  # (n X,)
            items = _gathered_block(table, table_gating, index[start:stop])
            for tensor in saved:
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
            out = backward_fn(
                block[0],
                block[1],
                items[0],
                items[1],
                block[2],
                w1_mlp,
                w2_mlp,
                ctx.inv_tau,
                *saved,
                block[3],
                block[4],
            )
            grad_q[start:stop] = out[0]
            grad_qg[start:stop] = out[1]
            grad_table.index_add_(0, rows_index, out[2].reshape(-1, *table.shape[1:]))
            grad_table_gating.index_add_(0, rows_index, out[3].reshape(-1, table_gating.shape[1]))
            for total, part in zip(grads[4:], out[4:], strict=True):
                total += part
        ctx.activations = None
        return (
            *(grad.to(t.dtype) for grad, t in zip(grads, inputs, strict=True)),
            None,
            None,
            None,
            None,
        )


def mol_scores_gathered(
    queries: torch.Tensor,
    query_gating: torch.Tensor,
    table: torch.Tensor,
    table_gating: torch.Tensor,
    index: torch.Tensor,
    *,
    temperature: float,
    hidden_weight: torch.Tensor,
    hidden_bias: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    dropout: float,
    mlp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Training-time MoL scores of every query row against its own candidates, differentiable.

    Equal (up to rounding) to gathering ``table[index]`` and scoring the pairs with
    :func:`~mol_core.similarity.gating.glu_silu_scores` in training mode, with the dropout mask of
    :func:`~mol_core.similarity.gating_grouped.keep_mask`.

    Args:
        queries: ``(M, Pq, d)`` L2-normalised query components.
        query_gating: ``(M, P)`` query gating features.
        table: ``(U, Px, d)`` L2-normalised components of the candidates' items.
        table_gating: ``(U, P)`` their gating features.
        index: ``(M, X)`` int64, row ``m``'s candidates as rows of ``table``.
        temperature: the component logits are divided by it.
        hidden_weight, hidden_bias, out_weight, out_bias: the pair-wise gating MLP (``(H, P)``, ``(H,)``,
            ``(P, H)``, ``(P,)``).
        dropout: softmax dropout probability.
        mlp_dtype: the pair-wise MLP's dtype (e.g. bf16); ``None`` keeps the weights' dtype. The component
            logits, the mixture and every gradient stay float32.

    Returns:
        ``(M, X)`` float32 scores.

    Raises:
        ShapeError: shapes that do not fit together, or an index outside ``[0, U)``.
    """
    rows, num_q, dim = queries.shape
    if table.dim() != 3 or table.shape[2] != dim:
        raise ShapeError(f"table must have shape (U, Px, d={dim}); got {tuple(table.shape)}")
    num_p = num_q * table.shape[1]
    if query_gating.shape != (rows, num_p) or table_gating.shape != (table.shape[0], num_p):
        raise ShapeError(
            f"gating features must have shapes (M, P) = ({rows}, {num_p}) and (U, P) = "
            f"({table.shape[0]}, {num_p}); got {tuple(query_gating.shape)} and {tuple(table_gating.shape)}"
        )
    if index.dim() != 2 or index.shape[0] != rows or index.dtype != torch.int64:
        raise ShapeError(
            f"index must be int64 of shape (M={rows}, X); got {index.dtype} {tuple(index.shape)}"
        )
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= table.shape[0]):
        raise ShapeError(
            f"index must lie in [0, U={table.shape[0]}); got [{int(index.min())}, {int(index.max())}]"
        )
    scores: torch.Tensor = _GatheredMoL.apply(  # type: ignore[no-untyped-call]
        queries.float(),
        query_gating.float(),
        table.float(),
        table_gating.float(),
        hidden_weight,
        hidden_bias,
        out_weight,
        out_bias,
        index,
        1.0 / temperature,
        dropout,
        mlp_dtype or hidden_weight.dtype,
    )
    return scores
