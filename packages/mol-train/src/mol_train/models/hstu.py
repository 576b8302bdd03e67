"""HSTU (Zhai et al., ICML 2024, "Actions Speak Louder than Words"): pointwise SiLU attention blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mol_core._checks import check_fraction, check_positive_int
from mol_train.models._inputs import PositionalInput, attention_mask, check_sequence_inputs
from mol_train.models._relative_bias import RelativeAttentionBias, query_time_buckets, relative_offsets

__all__ = ["HSTUEncoder"]

_NORM_EPS = 1e-6


class _HSTUBlock(nn.Module):
    """One sequential transduction unit.

    ``U, V, Q, K = split(SiLU(Norm(X) W))``;
    ``A = SiLU(Q K^T + rab) / max_len`` on allowed (causal, valid) pairs, 0 elsewhere;
    ``Y = X + f2(Drop(Norm(A V) * U))``. ``Norm`` is a LayerNorm without affine parameters.
    """

    def __init__(
        self,
        dim: int,
        max_len: int,
        num_heads: int,
        attention_dim: int,
        linear_dim: int,
        dropout: float,
        attention_dropout: float,
        num_time_buckets: int,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.num_heads = num_heads
        self.attention_dim = attention_dim
        self.linear_dim = linear_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        width = num_heads * (2 * linear_dim + 2 * attention_dim)
        self.uvqk = nn.Parameter(torch.empty(dim, width).normal_(0.0, 0.02))  # (D, H * (2 dv + 2 dqk))
        self.out = nn.Linear(num_heads * linear_dim, dim)
        nn.init.xavier_uniform_(self.out.weight)
        self.relative_bias = RelativeAttentionBias(max_len, num_time_buckets)

    def forward(
        self,
        x: torch.Tensor,
        allowed: torch.Tensor,
        valid: torch.Tensor,
        offsets: torch.Tensor,
        buckets: torch.Tensor | None,
    ) -> torch.Tensor:
        """``(B, L, D), (B, L, L) bool, (B, L) bool, (L, L) int64, (B, L, L) int64 | None -> (B, L, D)``."""
        batch, length, dim = x.shape
        heads, dqk, dv = self.num_heads, self.attention_dim, self.linear_dim
        normed = F.layer_norm(x, (dim,), eps=_NORM_EPS)  # (B, L, D)
        projected = F.silu(normed @ self.uvqk)  # (B, L, H * (2 dv + 2 dqk))
        u, v, q, k = torch.split(projected, [heads * dv, heads * dv, heads * dqk, heads * dqk], dim=-1)
        q = q.view(batch, length, heads, dqk)  # (B, L, H, dqk)
        k = k.view(batch, length, heads, dqk)  # (B, L, H, dqk)
        v = v.view(batch, length, heads, dv)  # (B, L, H, dv)
        logits = torch.einsum("bihd,bjhd->bhij", q, k)  # (B, H, L, L)
        logits = logits + self.relative_bias(offsets, buckets).unsqueeze(1)  # (B, H, L, L)
        weights = F.silu(logits) / self.max_len  # (B, H, L, L)
        weights = torch.where(allowed.unsqueeze(1), weights, torch.zeros_like(weights))  # (B, H, L, L)
        weights = F.dropout(weights, p=self.attention_dropout, training=self.training)  # (B, H, L, L)
        attended = torch.einsum("bhij,bjhd->bihd", weights, v)  # (B, L, H, dv)
        attended = attended.reshape(batch, length, heads * dv)  # (B, L, H dv)
        gated = F.layer_norm(attended, (heads * dv,), eps=_NORM_EPS) * u  # (B, L, H dv)
        y = x + self.out(F.dropout(gated, p=self.dropout, training=self.training))  # (B, L, D)
        return torch.where(valid.unsqueeze(-1), y, torch.zeros_like(y))  # (B, L, D)


class HSTUEncoder(nn.Module):
    """Hierarchical Sequential Transduction Units over a right-aligned item history.

    Each block projects once to ``U, V, Q, K`` (SiLU), attends with pointwise ``SiLU(Q K^T + rab)``
    normalised by ``max_len`` instead of a softmax, adds a relative attention bias from relative
    positions and, when timestamps are given, from log-bucketed time gaps, and gates the normalised
    attention output with ``U``. Equations, masking and the choices made where the paper is silent:
    docs/mol-train-models.md.

    The defaults are the paper's ML-1M **HSTU-large** (generative-recommenders
    ``configs/ml-1m/hstu-sampled-softmax-n128-large-final.gin``): 8 blocks, 2 heads, attention dim 25,
    linear dim 25, item dim D = 50, dropout 0.2 on the input and on each block's output projection, no
    attention dropout. ``max_len`` 201 holds the 200-item history plus the target slot the reference
    appends; the reference pads to 211 (10 more generative output slots), which only changes the constant
    ``1 / max_len`` that the following LayerNorm cancels.

    Args:
        dim: ``D``, the item embedding width and the model width.
        max_len: the longest history ``L``; also the attention normaliser ``n``.
        num_blocks: HSTU blocks.
        num_heads: attention heads ``H``.
        attention_dim: per-head width ``dqk`` of Q and K.
        linear_dim: per-head width ``dv`` of V and U.
        dropout: dropout on the input embeddings and before each block's output projection ``f2``.
        attention_dropout: dropout on the pointwise attention weights (0 in the reference).
        num_time_buckets: the largest log time bucket (128 in the reference).

    Raises:
        ConfigError: a size is not a positive integer or a dropout rate is outside ``[0, 1)``.

    Example:
        >>> encoder = HSTUEncoder(dim=8, max_len=5, num_blocks=1, num_heads=2, attention_dim=4, linear_dim=4)
        >>> valid = torch.tensor([[False, True, True, True, True]])
        >>> times = torch.tensor([[0, 10, 20, 3600, 90000]])
        >>> encoder.eval()(torch.randn(1, 5, 8), valid, times).shape
        torch.Size([1, 5, 8])
    """

    def __init__(
        self,
        *,
        dim: int = 50,
        max_len: int = 201,
        num_blocks: int = 8,
        num_heads: int = 2,
        attention_dim: int = 25,
        linear_dim: int = 25,
        dropout: float = 0.2,
        attention_dropout: float = 0.0,
        num_time_buckets: int = 128,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.max_len = check_positive_int("max_len", max_len)
        self.num_blocks = check_positive_int("num_blocks", num_blocks)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.attention_dim = check_positive_int("attention_dim", attention_dim)
        self.linear_dim = check_positive_int("linear_dim", linear_dim)
        self.dropout = check_fraction("dropout", dropout)
        self.attention_dropout = check_fraction("attention_dropout", attention_dropout)
        self.num_time_buckets = check_positive_int("num_time_buckets", num_time_buckets)
        self.inputs = PositionalInput(dim, max_len, self.dropout)
        self.blocks = nn.ModuleList(
            [
                _HSTUBlock(
                    dim,
                    max_len,
                    num_heads,
                    attention_dim,
                    linear_dim,
                    self.dropout,
                    self.attention_dropout,
                    num_time_buckets,
                )
                for _ in range(num_blocks)
            ]
        )

    def forward(
        self,
        item_embeddings: torch.Tensor,
        valid: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encodes right-aligned histories.

        Args:
            item_embeddings: ``(B, L, D)``, ``L <= max_len``; rows at padded positions are ignored.
            valid: ``(B, L)`` bool, False at (left) padding.
            timestamps: ``(B, L)`` int64 item times (any unit; the buckets assume seconds), or None for no
                time bias. Values at padded positions are ignored.
            next_timestamps: ``(B,)`` int64, the time the last position's query is about (the request time
                in serving, the target's time in evaluation, as the reference does); None uses the last
                item's own time. Only with ``timestamps``.

        Returns:
            ``(B, L, D)``: the encoded sequence, zeros at padded positions. The output at position ``t``
            depends on the items at ``0..t`` and, with timestamps, on the times at ``0..t+1``.

        Raises:
            ShapeError: an argument's shape or dtype is not the expected one.
        """
        check_sequence_inputs(
            item_embeddings, valid, timestamps, next_timestamps, dim=self.dim, max_len=self.max_len
        )
        allowed = attention_mask(valid)  # (B, L, L)
        offsets = relative_offsets(item_embeddings.shape[1], item_embeddings.device)  # (L, L)
        buckets = (
            None
            if timestamps is None
            else query_time_buckets(timestamps, next_timestamps, self.num_time_buckets)  # (B, L, L)
        )
        x: torch.Tensor = self.inputs(item_embeddings, valid)  # (B, L, D)
        for block in self.blocks:
            x = block(x, allowed, valid, offsets, buckets)  # (B, L, D)
        return x
