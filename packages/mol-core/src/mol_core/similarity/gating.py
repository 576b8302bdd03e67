"""The Mixture-of-Logits gating network (the paper's ``glu_silu`` gating).

Three small MLPs produce the ``P`` mixing logits of a (query, item) pair:

    w = SiLU(query_mlp(q) * item_mlp(x) + logits_mlp(component_logits))
    pi = softmax(w)

``query_mlp`` runs once per query and ``item_mlp`` once per item (offline, stored with the item side), so
only ``logits_mlp`` runs per pair. During training the softmax output gets dropout and is renormalised to
sum to 1 again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mol_core._checks import check_fraction, check_positive_int

__all__ = ["GatingMLP", "GluSiluGating"]

_RENORM_EPS = 1e-6


class GatingMLP(nn.Module):
    """``Linear(in, hidden) -> SiLU -> Linear(hidden, P)``: one of the three gating MLPs.

    Args:
        input_dim: features in.
        hidden_dim: hidden units (128 in the paper).
        num_components: ``P`` outputs.
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_components: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(check_positive_int("gating input_dim", input_dim), hidden_dim)
        self.out = nn.Linear(hidden_dim, num_components)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(*, in) -> (*, P)``."""
        out: torch.Tensor = self.out(F.silu(self.hidden(x.to(self.hidden.weight.dtype))))
        return out


class GluSiluGating(nn.Module):
    """Mixing weights ``pi = softmax(SiLU(q_part * i_part + qi_part))`` with training-time softmax dropout.

    Args:
        query_input_dim: ``Dq``, width of the query representation.
        item_input_dim: ``Dx``, width of the item representation.
        num_components: ``P = Pq * Px``.
        hidden_dim: hidden units of each MLP.
        dropout: dropout probability on the softmax output during training (then renormalised).
    """

    def __init__(
        self,
        *,
        query_input_dim: int,
        item_input_dim: int,
        num_components: int,
        hidden_dim: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        check_positive_int("gating_hidden_dim", hidden_dim)
        check_positive_int("num_components", num_components)
        self.dropout = check_fraction("gating_dropout", dropout)
        self.query_mlp = GatingMLP(query_input_dim, hidden_dim, num_components)
        self.item_mlp = GatingMLP(item_input_dim, hidden_dim, num_components)
        self.logits_mlp = GatingMLP(num_components, hidden_dim, num_components)

    def query_features(self, query_repr: torch.Tensor) -> torch.Tensor:
        """``(B, Dq) -> (B, P)`` the query's part, computed once per query."""
        features: torch.Tensor = self.query_mlp(query_repr)
        return features

    def item_features(self, item_repr: torch.Tensor) -> torch.Tensor:
        """``(*, Dx) -> (*, P)`` the item's part, computed offline once per item."""
        features: torch.Tensor = self.item_mlp(item_repr)
        return features

    def forward(
        self, logits: torch.Tensor, query_features: torch.Tensor, item_features: torch.Tensor
    ) -> torch.Tensor:
        """Mixing weights for every pair.

        Args:
            logits: ``(B, X, P)`` component logits.
            query_features: ``(B, 1, P)``.
            item_features: ``(B, X, P)`` or ``(1, X, P)``.

        Returns:
            ``(B, X, P)`` float32 weights, non-negative; each row sums to 1 (up to dropout renormalisation).
        """
        pair = self.logits_mlp(logits)  # (B, X, P)
        gate_logits = F.silu(query_features * item_features + pair)  # (B, X, P)
        weights = torch.softmax(gate_logits.float(), dim=-1)  # (B, X, P), float32 for bf16 safety
        if self.training and self.dropout > 0.0:
            weights = F.dropout(weights, p=self.dropout, training=True)
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(_RENORM_EPS)
        return weights
