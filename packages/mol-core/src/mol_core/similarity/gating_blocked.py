"""The gated mixture of :func:`~mol_core.similarity.gating.glu_silu_scores`, computed in cache-sized blocks.

Training scores ``M`` queries against ``X`` candidates each, and the pair-wise gating MLP's hidden layer is
``(M, X, H)``: on ML-1M with ``R = 128`` negatives that is hundreds of MB per tensor, so eager autograd
spends its time streaming element-wise work (SiLU, its gradient, the products) through memory. This
autograd function runs forward and backward over blocks of query rows, keeps only its inputs and the
dropout mask for backward, and recomputes a block's activations there, so every element-wise pass works
on a block that stays in cache. Forward and gradients equal the eager function's (tested against
autograd).

Shape symbols: M query rows, X candidates per row, P components, H hidden units of the pair-wise MLP.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["glu_silu_scores_blocked"]

_TINY = 1e-30
#: (row, candidate) pairs per block: the (block, H) activations then stay in a core's cache.
BLOCK_PAIRS = 4096


def _row_blocks(rows: int, num_x: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the blocks of query rows, about :data:`BLOCK_PAIRS` pairs each."""
    step = max(1, BLOCK_PAIRS // max(1, num_x))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _silu_grad(x: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
    """d silu(x) / dx from ``x`` and ``sigmoid(x)``."""
    return sig * (1.0 + x * (1.0 - sig))


class _BlockedGluSilu(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        query_features: torch.Tensor,
        item_features: torch.Tensor,
        hidden_weight: torch.Tensor,
        hidden_bias: torch.Tensor,
        out_weight: torch.Tensor,
        out_bias: torch.Tensor,
        dropout: float,
        training: bool,
        mlp_dtype: torch.dtype | None,
    ) -> torch.Tensor:
        rows, num_x, _ = logits.shape
        drop = training and dropout > 0.0
        keep = torch.rand(logits.shape, device=logits.device) >= dropout if drop else None  # (M, X, P)
        scores = torch.empty(rows, num_x, dtype=torch.float32, device=logits.device)
        dtype = mlp_dtype or hidden_weight.dtype
        weights = tuple(w.to(dtype) for w in (hidden_weight, hidden_bias, out_weight, out_bias))
        for start, stop in _row_blocks(rows, num_x):
            block = _Block(logits, query_features, item_features, keep, start, stop)
            e = block.forward(*weights).e
            ell = block.logits.float()
            scores[start:stop] = (e * ell).sum(-1) / e.sum(-1).clamp_min(_TINY)
        ctx.save_for_backward(
            logits, query_features, item_features, hidden_weight, hidden_bias, out_weight, out_bias, scores
        )
        ctx.keep = keep
        ctx.mlp_dtype = mlp_dtype
        return scores

    @staticmethod
    def backward(ctx: Any, grad_scores: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, query_features, item_features, w1, b1, w2, b2, scores = ctx.saved_tensors
        keep, dtype = ctx.keep, ctx.mlp_dtype or w1.dtype
        weights = tuple(w.to(dtype) for w in (w1, b1, w2, b2))
        rows, num_x, _ = logits.shape
        grad_logits = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        grad_query = torch.zeros(query_features.shape, dtype=torch.float32, device=logits.device)
        grad_item = torch.zeros(item_features.shape, dtype=torch.float32, device=logits.device)
        grad_w1 = torch.zeros(w1.shape, dtype=torch.float32, device=logits.device)
        grad_b1 = torch.zeros(b1.shape, dtype=torch.float32, device=logits.device)
        grad_w2 = torch.zeros(w2.shape, dtype=torch.float32, device=logits.device)
        grad_b2 = torch.zeros(b2.shape, dtype=torch.float32, device=logits.device)
        shared_items = item_features.shape[0] == 1 and rows > 1
        for start, stop in _row_blocks(rows, num_x):
            block = _Block(logits, query_features, item_features, keep, start, stop)
            act = block.forward(*weights)
            e, z, a1, h = act.e, act.z, act.a1, act.h
            ell = block.logits.float()
            total = e.sum(-1, keepdim=True).clamp_min(_TINY)
            pi = e / total  # (c, X, P)
            g_s = grad_scores[start:stop].float().unsqueeze(-1)  # (c, X, 1)
            grad_ell = g_s * pi  # (c, X, P): through the mixture
            g_gate = g_s * pi * (ell - scores[start:stop].unsqueeze(-1))  # (c, X, P)
            g_z = g_gate * _silu_grad(z, act.z_sigmoid)  # (c, X, P)
            qf, itf = block.query.float(), block.items.float()
            grad_query[start:stop] += (g_z * itf).sum(dim=1, keepdim=True)
            if shared_items:
                grad_item += (g_z * qf).sum(dim=0, keepdim=True)
            else:
                grad_item[start:stop] = g_z * qf
            flat_gz = g_z.reshape(-1, g_z.shape[-1])  # (c X, P)
            flat_h = h.reshape(-1, h.shape[-1]).float()  # (c X, H)
            grad_w2 += flat_gz.T @ flat_h
            grad_b2 += flat_gz.sum(0)
            g_h = (flat_gz.to(dtype) @ weights[2]).float()  # (c X, H)
            width = a1.shape[-1]
            g_a1 = g_h * _silu_grad(a1.reshape(-1, width).float(), act.a1_sigmoid.reshape(-1, width).float())
            grad_w1 += g_a1.T @ ell.reshape(-1, ell.shape[-1])
            grad_b1 += g_a1.sum(0)
            grad_ell = grad_ell + (g_a1.to(dtype) @ weights[0]).float().view_as(grad_ell)
            grad_logits[start:stop] = grad_ell
        return (
            grad_logits.to(logits.dtype),
            grad_query.to(query_features.dtype),
            grad_item.to(item_features.dtype),
            grad_w1.to(w1.dtype),
            grad_b1.to(b1.dtype),
            grad_w2.to(w2.dtype),
            grad_b2.to(b2.dtype),
            None,
            None,
            None,
        )


class _Block:
    """Rows ``start:stop`` of the inputs, broadcast as the forward needs them."""

    def __init__(
        self,
        logits: torch.Tensor,
        query_features: torch.Tensor,
        item_features: torch.Tensor,
        keep: torch.Tensor | None,
        start: int,
        stop: int,
    ) -> None:
        self.logits = logits[start:stop]  # (c, X, P)
        self.query = query_features[start:stop]  # (c, 1, P)
        self.items = item_features if item_features.shape[0] == 1 else item_features[start:stop]
        self.keep = None if keep is None else keep[start:stop]

    def forward(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> _Activations:
        """The kept exponentials ``(c, X, P)`` and the activations that made them."""
        a1 = F.linear(self.logits.to(w1.dtype), w1, b1)  # (c, X, H)
        a1_sigmoid = torch.sigmoid(a1)
        h = a1 * a1_sigmoid  # SiLU, keeping the sigmoid for the gradient
        pair = F.linear(h, w2, b2)  # (c, X, P)
        z = (self.query * self.items + pair).float()  # (c, X, P)
        z_sigmoid = torch.sigmoid(z)
        gate = z * z_sigmoid
        e = torch.exp(gate - gate.amax(dim=-1, keepdim=True))
        if self.keep is not None:
            e = e * self.keep
        return _Activations(e, z, z_sigmoid, a1, a1_sigmoid, h)


class _Activations(NamedTuple):
    """One block's forward: ``e`` and ``z``, ``z_sigmoid`` ``(c, X, P)``; ``a1``, ``a1_sigmoid``, ``h``
    ``(c, X, H)``."""

    e: torch.Tensor
    z: torch.Tensor
    z_sigmoid: torch.Tensor
    a1: torch.Tensor
    a1_sigmoid: torch.Tensor
    h: torch.Tensor


def glu_silu_scores_blocked(
    logits: torch.Tensor,
    query_features: torch.Tensor,
    item_features: torch.Tensor,
    hidden_weight: torch.Tensor,
    hidden_bias: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    dropout: float,
    training: bool,
    mlp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """:func:`~mol_core.similarity.gating.glu_silu_scores` in cache-sized blocks of query rows.

    Args and returns as there: ``logits (M, X, P)``, ``query_features (M, 1, P)``, ``item_features
    (M, X, P)`` or ``(1, X, P)``; ``(M, X)`` float32 scores.
    """
    out: torch.Tensor = _BlockedGluSilu.apply(  # type: ignore[no-untyped-call]
        logits,
        query_features,
        item_features,
        hidden_weight,
        hidden_bias,
        out_weight,
        out_bias,
        dropout,
        training,
        mlp_dtype,
    )
    return out
