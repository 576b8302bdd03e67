"""Shared pieces of the query encoders: argument checks, masks and the positional input layer.

Conventions shared by every encoder in :mod:`mol_train.models`:

- sequences are **right-aligned**: position ``L - 1`` holds the most recent item and padding sits on the
  left, marked ``valid == False``;
- absolute positions count back from the most recent item, so the same history gets the same position
  embeddings whatever the padded length ``L`` of its batch (the layout of the original SASRec);
- a padded position never influences a valid one (it is masked out as an attention key), and every
  encoder returns zeros at padded positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mol_core._checks import shape_str
from mol_core.errors import ShapeError

__all__ = ["PositionalInput", "attention_mask", "check_sequence_inputs"]


def check_sequence_inputs(
    item_embeddings: torch.Tensor,
    valid: torch.Tensor,
    timestamps: torch.Tensor | None,
    next_timestamps: torch.Tensor | None,
    *,
    dim: int,
    max_len: int,
) -> None:
    """Raises :class:`ShapeError` unless the inputs of an encoder's ``forward`` fit together.

    Args:
        item_embeddings: ``(B, L, D)`` floating point.
        valid: ``(B, L)`` bool.
        timestamps: ``(B, L)`` int64, or None.
        next_timestamps: ``(B,)`` int64, or None; only allowed together with ``timestamps``.
        dim: the encoder's width ``D``.
        max_len: the longest ``L`` the encoder was built for.

    Raises:
        ShapeError: a rank, size or dtype differs from the expected one; the message names the shape.
    """
    if item_embeddings.dim() != 3 or item_embeddings.shape[2] != dim:
        raise ShapeError(
            f"item_embeddings must have shape (B, L, {dim}); got {shape_str(item_embeddings.shape)}"
        )
    if not item_embeddings.is_floating_point():
        raise ShapeError(f"item_embeddings must be a floating point tensor; got {item_embeddings.dtype}")
    batch, length = item_embeddings.shape[0], item_embeddings.shape[1]
    if length > max_len:
        raise ShapeError(
            f"item_embeddings has L = {length} positions but the encoder was built with max_len = {max_len}; "
            "keep the most recent max_len items or build the encoder with a larger max_len"
        )
    expected = f"(B, L) = ({batch}, {length})"
    if valid.dim() != 2 or valid.shape[0] != batch or valid.shape[1] != length:
        raise ShapeError(f"valid must have shape {expected}; got {shape_str(valid.shape)}")
    if valid.dtype != torch.bool:
        raise ShapeError(f"valid must be a bool tensor; got {valid.dtype}")
    if timestamps is not None:
        if timestamps.dim() != 2 or timestamps.shape[0] != batch or timestamps.shape[1] != length:
            raise ShapeError(f"timestamps must have shape {expected}; got {shape_str(timestamps.shape)}")
        if timestamps.dtype != torch.int64:
            raise ShapeError(f"timestamps must be an int64 tensor; got {timestamps.dtype}")
    if next_timestamps is not None:
        if timestamps is None:
            raise ShapeError("next_timestamps was given without timestamps; pass both or neither")
        if next_timestamps.dim() != 1 or next_timestamps.shape[0] != batch:
            raise ShapeError(
                f"next_timestamps must have shape (B,) = ({batch},); got {shape_str(next_timestamps.shape)}"
            )
        if next_timestamps.dtype != torch.int64:
            raise ShapeError(f"next_timestamps must be an int64 tensor; got {next_timestamps.dtype}")


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """Which keys each query may attend to: causal, valid keys only, and always itself.

    ``allowed[b, i, j] = (j <= i) and (valid[b, j] or i == j)``. The diagonal keeps every row non-empty,
    so a padded query never sees an all-masked softmax row (no NaN); it changes nothing for a valid query,
    whose diagonal key is valid anyway.

    Args:
        valid: ``(B, L)`` bool.

    Returns:
        ``(B, L, L)`` bool, indexed ``[b, query, key]``.
    """
    length = valid.shape[1]
    positions = torch.arange(length, device=valid.device)  # (L,)
    causal = positions.unsqueeze(1) >= positions.unsqueeze(0)  # (L, L)
    diagonal = positions.unsqueeze(1) == positions.unsqueeze(0)  # (L, L)
    return causal.unsqueeze(0) & (valid.unsqueeze(1) | diagonal.unsqueeze(0))  # (B, L, L)


class PositionalInput(nn.Module):
    """``x = dropout(e * sqrt(D) + p_pos)``, zero at padded positions.

    ``p`` is a learned ``(max_len, D)`` table; right-aligned position ``t`` of a length-``L`` batch uses
    row ``max_len - L + t``, so the most recent item always gets the last row. The ``sqrt(D)`` scale and the
    truncated-normal initialisation (std ``1/sqrt(D)``) follow the generative-recommenders reference.

    Args:
        dim: ``D``.
        max_len: the longest sequence ``L``.
        dropout: dropout rate on the sum.
    """

    def __init__(self, dim: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.dim = dim
        self.max_len = max_len
        self.dropout = dropout
        std = 1.0 / math.sqrt(dim)
        self.position = nn.Parameter(torch.empty(max_len, dim))  # (max_len, D)
        nn.init.trunc_normal_(self.position, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)

    def forward(self, item_embeddings: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, L, D), (B, L) -> (B, L, D)``."""
        length = item_embeddings.shape[1]
        positions = self.position[self.max_len - length :]  # (L, D)
        x = item_embeddings * math.sqrt(self.dim) + positions.unsqueeze(0)  # (B, L, D)
        x = F.dropout(x, p=self.dropout, training=self.training)  # (B, L, D)
        # where() rather than a product: padded inputs may hold anything, NaN included.
        return torch.where(valid.unsqueeze(-1), x, torch.zeros_like(x))  # (B, L, D)
