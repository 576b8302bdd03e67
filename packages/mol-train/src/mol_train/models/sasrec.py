"""SASRec (Kang & McAuley, ICDM 2018): a causal softmax transformer over the item history."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mol_core._checks import check_fraction, check_positive_int
from mol_core.errors import ConfigError
from mol_train.models._inputs import PositionalInput, attention_mask, check_sequence_inputs

__all__ = ["SASRecEncoder"]


class _SASRecBlock(nn.Module):
    """``h = x + Drop(MHA(LN(x)))``; ``y = h + FFN(LN(h))``, zero at padded positions."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)
        for linear in (self.qkv, self.out, self.ffn_in, self.ffn_out):
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, L, D), (B, L, L) bool, (B, L) bool -> (B, L, D)``."""
        batch, length, dim = x.shape
        head_dim = dim // self.num_heads
        q, k, v = self.qkv(self.attention_norm(x)).chunk(3, dim=-1)  # 3 x (B, L, D)
        q = q.view(batch, length, self.num_heads, head_dim).transpose(1, 2)  # (B, H, L, D/H)
        k = k.view(batch, length, self.num_heads, head_dim).transpose(1, 2)  # (B, H, L, D/H)
        v = v.view(batch, length, self.num_heads, head_dim).transpose(1, 2)  # (B, H, L, D/H)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed.unsqueeze(1), dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, L, D/H)
        attended = attended.transpose(1, 2).reshape(batch, length, dim)  # (B, L, D)
        h = x + F.dropout(self.out(attended), p=self.dropout, training=self.training)  # (B, L, D)
        hidden = F.relu(self.ffn_in(self.ffn_norm(h)))  # (B, L, F)
        hidden = F.dropout(hidden, p=self.dropout, training=self.training)  # (B, L, F)
        y = h + F.dropout(self.ffn_out(hidden), p=self.dropout, training=self.training)  # (B, L, D)
        return torch.where(valid.unsqueeze(-1), y, torch.zeros_like(y))  # (B, L, D)


class SASRecEncoder(nn.Module):
    """Self-attentive sequential recommendation: ``num_blocks`` pre-LN causal transformer blocks.

    Maps the looked-up embeddings of a right-aligned item history to one query representation per
    position: the output at position ``t`` summarises items ``0..t`` and is trained to predict item
    ``t + 1``; the last position is the query for the next item. Equations, masking and the choices made
    where the paper is silent: docs/mol-train-models.md.

    Args:
        dim: ``D``, the item embedding width and the model width.
        max_len: the longest history ``L`` (rows of the learned position table).
        num_blocks: transformer blocks.
        num_heads: attention heads; must divide ``dim``.
        ffn_dim: hidden width of the point-wise feed-forward network.
        dropout: dropout on the input, the attention probabilities and both residual branches.

    Defaults are the generative-recommenders ML-1M SASRec baseline: D 50, 2 blocks, 1 head, FFN 50,
    dropout 0.2, 200 history items plus one target slot.

    Raises:
        ConfigError: a size is not a positive integer, ``num_heads`` does not divide ``dim``, or
            ``dropout`` is outside ``[0, 1)``.

    Example:
        >>> encoder = SASRecEncoder(dim=8, max_len=5, num_blocks=1, num_heads=2, ffn_dim=16)
        >>> valid = torch.tensor([[False, False, True, True, True]])
        >>> encoder.eval()(torch.randn(1, 5, 8), valid).shape
        torch.Size([1, 5, 8])
    """

    def __init__(
        self,
        *,
        dim: int = 50,
        max_len: int = 201,
        num_blocks: int = 2,
        num_heads: int = 1,
        ffn_dim: int = 50,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.max_len = check_positive_int("max_len", max_len)
        self.num_blocks = check_positive_int("num_blocks", num_blocks)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.ffn_dim = check_positive_int("ffn_dim", ffn_dim)
        self.dropout = check_fraction("dropout", dropout)
        if dim % num_heads != 0:
            raise ConfigError(
                f"num_heads must divide dim; got dim={dim}, num_heads={num_heads} "
                "(pick a num_heads among the divisors of dim)"
            )
        self.inputs = PositionalInput(dim, max_len, self.dropout)
        self.blocks = nn.ModuleList(
            [_SASRecBlock(dim, num_heads, ffn_dim, self.dropout) for _ in range(num_blocks)]
        )
        self.final_norm = nn.LayerNorm(dim)

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
            timestamps: ``(B, L)`` int64 or None; checked but unused (SASRec has no time signal). Taken so
                that every encoder has the same signature.
            next_timestamps: ``(B,)`` int64 or None; checked but unused, as ``timestamps``.

        Returns:
            ``(B, L, D)``: the encoded sequence, zeros at padded positions.

        Raises:
            ShapeError: an argument's shape or dtype is not the expected one.
        """
        check_sequence_inputs(
            item_embeddings, valid, timestamps, next_timestamps, dim=self.dim, max_len=self.max_len
        )
        allowed = attention_mask(valid)  # (B, L, L)
        x = self.inputs(item_embeddings, valid)  # (B, L, D)
        for block in self.blocks:
            x = block(x, allowed, valid)  # (B, L, D)
        y = self.final_norm(x)  # (B, L, D)
        return torch.where(valid.unsqueeze(-1), y, torch.zeros_like(y))  # (B, L, D)
