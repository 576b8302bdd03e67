"""Training-time MoL scores of query rows against their group's candidates, fused and compiled per block.

Training with per-sequence (or batch-shared) negatives scores ``M`` query rows in ``G`` groups: the rows
of group ``g`` (one sequence's positions) all meet the same ``X`` candidates. Computed the plain way
(:meth:`~mol_core.similarity.base.Similarity.score_groups`), the ``(M, X, P)`` component logits, the item
gating features expanded to every row, the pair-wise MLP's ``(M, X, H)`` hidden layer and each of their
gradients are separate tensors of hundreds of MB that every element-wise step streams through memory.

:func:`mol_scores_grouped` runs one autograd function over blocks of rows of one group. Per block, one
``torch.compile``-d function computes the component logits (one GEMM, the ``1 / tau`` folded in), the
gating MLP, the gated mixture and the score, and returns the activations backward needs (component
logits, pre-activation hidden layer in the MLP's dtype, gate logits); a second compiled function computes
every gradient of the block from them. The element-wise work is fused by Inductor between the matrix
multiplications and stays in cache; the item side is never expanded per row. The row count of a block is
a dynamic dimension, so sequences of any length share a few compiled graphs (Inductor specialises a
block of one row and splits small and large blocks).

The softmax dropout mask is drawn for all pairs up front: each keep decision compares 16 random bits with
the threshold, so the drop probability is ``dropout`` rounded to a multiple of ``1 / 65536``.

Shape symbols: M query rows, G groups, X candidates per group, Pq/Px components, P = Pq * Px, d component
width, H hidden units of the pair-wise gating MLP.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mol_core.errors import ShapeError

__all__ = ["check_grouped_inputs", "keep_mask", "mol_scores_grouped"]

_TINY = 1e-30
#: (row, candidate) pairs per block: a block's (pairs, H) hidden layer then stays within a core's caches.
BLOCK_PAIRS = 8192


def keep_mask(shape: Sequence[int], dropout: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool mask that keeps each element with probability ``1 - dropout`` (to a multiple of ``1 / 65536``).

    Draws 64 random bits per four elements from torch's default generator (seeded by ``torch.manual_seed``);
    with ``dropout <= 0`` it keeps everything and draws nothing.

    Returns:
        a bool tensor of ``shape``.
    """
    if dropout <= 0.0:  # everything kept: nothing drawn
        return torch.ones(*shape, dtype=torch.bool, device=device)
    count = 1
    for size in shape:
        count *= int(size)
    threshold = round(-32768 + dropout * 65536)  # keep a 16-bit draw iff it is >= threshold
    if threshold > 32767:  # outside int16: nothing is kept
        return torch.zeros(*shape, dtype=torch.bool, device=device)
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=device)
    return (words.view(torch.int16)[:count] >= threshold).view(*shape)


def _silu_grad(x: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
    """d silu(x) / dx from ``x`` and ``sigmoid(x)``."""
    return sig * (1.0 + x * (1.0 - sig))


def _component_logits(queries: torch.Tensor, items: torch.Tensor, inv_tau: float) -> torch.Tensor:
    """``(n, Pq, d)`` x ``(X, Px, d)`` shared or ``(n, X, Px, d)`` per row -> ``(n, X, P)`` logits times
    ``inv_tau``, component ``a * Px + b``."""
    rows, num_q, dim = queries.shape
    num_x, num_i = items.shape[-3], items.shape[-2]
    if items.dim() == 4:  # each row its own candidates: one small GEMM per row
        flat = torch.bmm(queries, items.reshape(rows, num_x * num_i, dim).transpose(1, 2))  # (n, Pq, X Px)
    else:
        flat = queries.reshape(rows * num_q, dim) @ items.reshape(num_x * num_i, dim).t()  # (n Pq, X Px)
    logits = flat.view(rows, num_q, num_x, num_i).permute(0, 2, 1, 3)  # (n, X, Pq, Px)
    return logits.reshape(rows, num_x, num_q * num_i) * inv_tau


def _row_item_gating(item_gating: torch.Tensor) -> torch.Tensor:
    """Item gating features broadcastable against ``(n, X, P)``: ``(1, X, P)`` if shared, else as given."""
    return item_gating if item_gating.dim() == 3 else item_gating.unsqueeze(0)


def _block_forward(
    queries: torch.Tensor,
    query_gating: torch.Tensor,
    items: torch.Tensor,
    item_gating: torch.Tensor,
    keep: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    inv_tau: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's ``(n, X)`` scores and the activations backward needs: logits ``(n, X, P)`` float32,
    hidden pre-activations ``(n, X, H)`` in the MLP's dtype, gate logits ``(n, X, P)`` float32.

    ``items`` is ``(X, Px, d)`` with ``item_gating`` ``(X, P)`` (candidates shared by the block's rows), or
    ``(n, X, Px, d)`` with ``(n, X, P)`` (each row its own)."""
    logits = _component_logits(queries, items, inv_tau)  # (n, X, P)
    hidden_pre = F.linear(logits.to(w1.dtype), w1, b1)  # (n, X, H)
    pair = F.linear(F.silu(hidden_pre), w2, b2)  # (n, X, P)
    gate_logits = query_gating.unsqueeze(1) * _row_item_gating(item_gating) + pair.float()  # (n, X, P)
    gate = F.silu(gate_logits)
    kept = torch.exp(gate - gate.amax(dim=-1, keepdim=True)) * keep  # (n, X, P)
    scores = (kept * logits).sum(dim=-1) / kept.sum(dim=-1).clamp_min(_TINY)  # (n, X)
    return scores, logits, hidden_pre, gate_logits


def _block_backward(
    queries: torch.Tensor,
    query_gating: torch.Tensor,
    items: torch.Tensor,
    item_gating: torch.Tensor,
    keep: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    inv_tau: float,
    logits: torch.Tensor,
    hidden_pre: torch.Tensor,
    gate_logits: torch.Tensor,
    grad_scores: torch.Tensor,
    scores: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Gradients of one block: queries, query gating, items, item gating (summed over the block's rows when
    shared, per row when each row has its own), then ``w1, b1, w2, b2`` in float32."""
    dtype = w1.dtype
    rows, num_q, dim = queries.shape
    num_x, num_i = items.shape[-3], items.shape[-2]
    per_row = items.dim() == 4
    sig_z = torch.sigmoid(gate_logits)
    gate = gate_logits * sig_z
    kept = torch.exp(gate - gate.amax(dim=-1, keepdim=True)) * keep
    weights = kept / kept.sum(dim=-1, keepdim=True).clamp_min(_TINY)  # (n, X, P)
    upstream = grad_scores.unsqueeze(-1)  # (n, X, 1)
    grad_gate = upstream * weights * (logits - scores.unsqueeze(-1)) * _silu_grad(gate_logits, sig_z)
    grad_query_gating = (grad_gate * _row_item_gating(item_gating)).sum(dim=1)  # (n, P)
    grad_item_gating = grad_gate * query_gating.unsqueeze(1)  # (n, X, P)
    if not per_row:
        grad_item_gating = grad_item_gating.sum(dim=0)  # (X, P)
    flat_grad_gate = grad_gate.reshape(-1, grad_gate.shape[-1])  # (n X, P)
    flat_pre = hidden_pre.reshape(-1, hidden_pre.shape[-1]).float()  # (n X, H)
    sig_pre = torch.sigmoid(flat_pre)
    hidden = (flat_pre * sig_pre).to(dtype)
    grad_w2 = flat_grad_gate.t().to(dtype) @ hidden  # (P, H)
    grad_b2 = flat_grad_gate.sum(dim=0)
    grad_pre = (flat_grad_gate.to(dtype) @ w2).float() * _silu_grad(flat_pre, sig_pre)  # (n X, H)
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (n X, P)
    grad_w1 = grad_pre.t().to(dtype) @ flat_logits.to(dtype)  # (H, P)
    grad_b1 = grad_pre.sum(dim=0)
    grad_logits = (upstream * weights).reshape_as(flat_logits) + (grad_pre.to(dtype) @ w1).float()  # (n X, P)
    grad_flat = (
        (grad_logits * inv_tau).view(rows, num_x, num_q, num_i).permute(0, 2, 1, 3).reshape(rows, num_q, -1)
    )  # (n, Pq, X Px)
    if per_row:
        row_items = items.reshape(rows, num_x * num_i, dim)  # (n, X Px, d)
        grad_queries = torch.bmm(grad_flat, row_items)  # (n, Pq, d)
        grad_items = torch.bmm(grad_flat.transpose(1, 2), queries).view(rows, num_x, num_i, dim)
    else:
        grad_flat = grad_flat.reshape(rows * num_q, -1)  # (n Pq, X Px)
        grad_queries = (grad_flat @ items.reshape(num_x * num_i, dim)).view(rows, num_q, dim)
        grad_items = (grad_flat.t() @ queries.reshape(rows * num_q, dim)).view(num_x, num_i, dim)
    return (
        grad_queries,
        grad_query_gating,
        grad_items,
        grad_item_gating,
        grad_w1.float(),
        grad_b1,
        grad_w2.float(),
        grad_b2,
    )


@functools.cache
def _compiled() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The two block functions through ``torch.compile`` (compiled on first call)."""
    return torch.compile(_block_forward), torch.compile(_block_backward)


def _blocks(group_sizes: Sequence[int], num_x: int) -> list[tuple[int, int, int]]:
    """``(group, start, stop)`` row blocks: a group's rows in pieces of at most ``BLOCK_PAIRS / X`` rows."""
    step = max(1, BLOCK_PAIRS // max(1, num_x))
    blocks, start = [], 0
    for group, size in enumerate(group_sizes):
        for block_start in range(start, start + size, step):
            blocks.append((group, block_start, min(block_start + step, start + size)))
        start += size
    return blocks


def _rows_dynamic(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Fresh copies of a block's row slices, their row count marked dynamic: a slice's storage offset and
    the base tensor's size would otherwise enter the compiled graphs' guards and force recompiles."""
    out = []
    for tensor in tensors:
        fresh = tensor.clone()
        torch._dynamo.maybe_mark_dynamic(fresh, 0)
        out.append(fresh)
    return out


class _GroupedMoL(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        queries: torch.Tensor,
        query_gating: torch.Tensor,
        items: torch.Tensor,
        item_gating: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        group_sizes: tuple[int, ...],
        inv_tau: float,
        dropout: float,
        mlp_dtype: torch.dtype,
    ) -> torch.Tensor:
        forward_fn, _ = _compiled()
        rows, num_x = queries.shape[0], items.shape[1]
        num_p = query_gating.shape[1]
        keep = keep_mask((rows, num_x, num_p), dropout, queries.device)
        weights = [w.to(mlp_dtype) for w in (w1, b1, w2, b2)]
        scores = torch.empty(rows, num_x, dtype=torch.float32, device=queries.device)
        activations = []
        for group, start, stop in _blocks(group_sizes, num_x):
            block = _rows_dynamic(queries[start:stop], query_gating[start:stop], keep[start:stop])
            out, logits, hidden_pre, gate_logits = forward_fn(
                block[0], block[1], items[group], item_gating[group], block[2], *weights, inv_tau
            )
            scores[start:stop] = out
            activations.append((logits, hidden_pre, gate_logits))
        ctx.save_for_backward(queries, query_gating, items, item_gating, w1, b1, w2, b2, scores, keep)
        ctx.activations = activations
        ctx.group_sizes, ctx.inv_tau, ctx.mlp_dtype = group_sizes, inv_tau, mlp_dtype
        return scores

    @staticmethod
    def backward(ctx: Any, grad_scores: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        _, backward_fn = _compiled()
        queries, query_gating, items, item_gating, w1, b1, w2, b2, scores, keep = ctx.saved_tensors
        w1_mlp, w2_mlp = w1.to(ctx.mlp_dtype), w2.to(ctx.mlp_dtype)
        grad_scores = grad_scores.float().contiguous()
        grads = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (queries, query_gating)]
        grads += [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (items, item_gating)]
        grads += [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (w1, b1, w2, b2)]
        grad_q, grad_qg, grad_i, grad_ig = grads[:4]
        blocks = _blocks(ctx.group_sizes, items.shape[1])
        for (group, start, stop), saved in zip(blocks, ctx.activations, strict=True):
            block = _rows_dynamic(
                queries[start:stop],
                query_gating[start:stop],
                keep[start:stop],
                grad_scores[start:stop],
                scores[start:stop],
            )
            for tensor in saved:
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
            out = backward_fn(
                block[0],
                block[1],
                items[group],
                item_gating[group],
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
            grad_i[group] += out[2]
            grad_ig[group] += out[3]
            for total, part in zip(grads[4:], out[4:], strict=True):
                total += part
        ctx.activations = None
        inputs = (queries, query_gating, items, item_gating, w1, b1, w2, b2)
        return (
            *(grad.to(t.dtype) for grad, t in zip(grads, inputs, strict=True)),
            None,
            None,
            None,
            None,
        )


def check_grouped_inputs(
    queries: torch.Tensor,
    query_gating: torch.Tensor,
    items: torch.Tensor,
    item_gating: torch.Tensor,
    group_sizes: Sequence[int],
) -> tuple[int, ...]:
    """The group sizes as a tuple, once the shapes of :func:`mol_scores_grouped`'s inputs fit together.

    Raises:
        ShapeError: shapes that do not fit together, or group sizes that do not sum to ``M``.
    """
    sizes = tuple(int(size) for size in group_sizes)
    rows, num_q, dim = queries.shape
    if items.dim() != 4 or items.shape[0] != len(sizes) or items.shape[3] != dim:
        raise ShapeError(f"items must have shape (G={len(sizes)}, X, Px, d={dim}); got {tuple(items.shape)}")
    num_p = num_q * items.shape[2]
    if query_gating.shape != (rows, num_p) or item_gating.shape != (*items.shape[:2], num_p):
        raise ShapeError(
            f"gating features must have shapes (M, P) = ({rows}, {num_p}) and (G, X, P) = "
            f"({items.shape[0]}, {items.shape[1]}, {num_p}); got {tuple(query_gating.shape)} and "
            f"{tuple(item_gating.shape)}"
        )
    if sum(sizes) != rows or any(size < 0 for size in sizes):
        raise ShapeError(f"group_sizes must be >= 0 and sum to M = {rows}; got a sum of {sum(sizes)}")
    return sizes


def mol_scores_grouped(
    queries: torch.Tensor,
    query_gating: torch.Tensor,
    items: torch.Tensor,
    item_gating: torch.Tensor,
    group_sizes: Sequence[int],
    *,
    temperature: float,
    hidden_weight: torch.Tensor,
    hidden_bias: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    dropout: float,
    mlp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Training-time MoL scores of every query row against its group's candidates, differentiable.

    Equal (up to rounding) to the component logits of :meth:`Similarity.component_logits` mixed by
    :func:`~mol_core.similarity.gating.glu_silu_scores` in training mode, with the dropout mask of
    :func:`keep_mask`.

    Args:
        queries: ``(M, Pq, d)`` L2-normalised query components, group after group.
        query_gating: ``(M, P)`` query gating features.
        items: ``(G, X, Px, d)`` L2-normalised candidate components of each group.
        item_gating: ``(G, X, P)`` candidate gating features.
        group_sizes: ``G`` row counts, summing to ``M``.
        temperature: the component logits are divided by it.
        hidden_weight, hidden_bias, out_weight, out_bias: the pair-wise gating MLP (``(H, P)``, ``(H,)``,
            ``(P, H)``, ``(P,)``).
        dropout: softmax dropout probability.
        mlp_dtype: the pair-wise MLP's dtype (e.g. bf16); ``None`` keeps the weights' dtype. The component
            logits, the mixture and every gradient stay float32.

    Returns:
        ``(M, X)`` float32 scores.

    Raises:
        ShapeError: shapes that do not fit together, or group sizes that do not sum to ``M``.
    """
    sizes = check_grouped_inputs(queries, query_gating, items, item_gating, group_sizes)
    scores: torch.Tensor = _GroupedMoL.apply(  # type: ignore[no-untyped-call]
        queries.float(),
        query_gating.float(),
        items.float(),
        item_gating.float(),
        hidden_weight,
        hidden_bias,
        out_weight,
        out_bias,
        sizes,
        1.0 / temperature,
        dropout,
        mlp_dtype or hidden_weight.dtype,
    )
    return scores
