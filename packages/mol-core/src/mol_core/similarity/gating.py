"""The Mixture-of-Logits gating network (the paper's ``glu_silu`` gating).

Three small MLPs produce the ``P`` mixing logits of a (query, item) pair:

    w = SiLU(query_mlp(q) * item_mlp(x) + logits_mlp(component_logits))
    pi = softmax(w)

``query_mlp`` runs once per query and ``item_mlp`` once per item (offline, stored with the item side), so
only ``logits_mlp`` runs per pair. During training the softmax output gets dropout and is renormalised to
sum to 1 again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mol_core._checks import check_fraction, check_positive_int
from mol_core.errors import ConfigError

__all__ = ["SCORE_KERNELS", "GatingMLP", "GluSiluGating", "glu_silu_scores"]

#: How the training-time gated mixture can run (GluSiluGating.set_scores_backend).
SCORE_KERNELS = ("eager", "compiled", "blocked", "fused", "fused_cpp")

_RENORM_EPS = 1e-6
_TINY = 1e-30


def glu_silu_scores(
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
    """The gated mixture ``sum_p pi_p * logits_p`` without materialising the weights ``pi``.

    ``softmax`` followed by dropout and renormalisation is ``e * keep / sum(e * keep)`` with
    ``e = exp(w - max w)``: the softmax's normaliser and dropout's ``1 / (1 - p)`` both cancel, so the
    score is ``sum(e * keep * logits) / sum(e * keep)``. Equal to :meth:`GluSiluGating.forward`'s weights
    mixed with ``logits`` (up to rounding, and to the renormalisation clamp when every component of a pair
    is dropped, where both give 0).

    Args:
        logits: ``(B, X, P)`` component logits.
        query_features: ``(B, 1, P)``.
        item_features: ``(B, X, P)`` or ``(1, X, P)``.
        hidden_weight, hidden_bias, out_weight, out_bias: the ``logits_mlp`` parameters.
        dropout: the softmax dropout probability (used when ``training``).
        training: whether to drop components.
        mlp_dtype: run the pair-wise ``logits_mlp`` in this dtype (e.g. bf16, where the CPU or GPU has
            fast bf16 matmuls); ``None`` keeps the parameters' dtype. The component logits that are mixed
            stay in float32 either way.

    Returns:
        ``(B, X)`` float32 scores.
    """
    dtype = mlp_dtype or hidden_weight.dtype
    hidden = F.silu(F.linear(logits.to(dtype), hidden_weight.to(dtype), hidden_bias.to(dtype)))  # (B, X, H)
    pair = F.linear(hidden, out_weight.to(dtype), out_bias.to(dtype))  # (B, X, P)
    gate = F.silu(query_features * item_features + pair).float()  # (B, X, P)
    e = torch.exp(gate - gate.amax(dim=-1, keepdim=True).detach())  # (B, X, P), max 1
    if training and dropout > 0.0:
        e = e * (torch.rand_like(e) >= dropout)
    return (e * logits.float()).sum(dim=-1) / e.sum(dim=-1).clamp_min(_TINY)  # (B, X)


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

    @torch.no_grad()
    def reset_xavier(self) -> None:
        """Xavier-normal weights and zero biases (the reference recipe's initialisation)."""
        for layer in (self.hidden, self.out):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

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
        self._scores_fn: Callable[..., torch.Tensor] = glu_silu_scores
        self._mlp_dtype: torch.dtype | None = None
        self._kernel = "eager"

    def set_scores_backend(self, *, kernel: str = "eager", mlp_dtype: torch.dtype | None = None) -> None:
        """How :meth:`scores` runs in training mode, and in which dtype its pair-wise MLP runs.

        Args:
            kernel: one of :data:`SCORE_KERNELS`: ``"eager"`` (:func:`glu_silu_scores` as written),
                ``"compiled"`` (through ``torch.compile`` with dynamic shapes; the first call compiles) or
                ``"blocked"`` (:func:`~mol_core.similarity.gating_blocked.glu_silu_scores_blocked`: blocks
                of rows that stay in cache, activations recomputed in backward) or ``"fused"``: grouped
                scoring (:meth:`MoLSimilarity.score_groups`, per-sequence and shared negatives) computes the
                component logits and the gated mixture in one compiled function per block
                (:mod:`~mol_core.similarity.gating_grouped`), as does per-position scoring
                (:meth:`MoLSimilarity.score_gathered`, :mod:`~mol_core.similarity.gating_gathered`);
                :meth:`scores` itself runs ``"blocked"``. ``"fused_cpp"``: as ``"fused"``, but grouped
                scoring with a float32 MLP on an x86-64 CPU goes through the C++ kernel of
                :mod:`~mol_core.similarity.gating_cpp` (where it cannot run, as ``"fused"``).
            mlp_dtype: see :func:`glu_silu_scores`; ``None`` keeps the parameters' dtype.

        In eval mode :meth:`scores` always runs eagerly in the parameters' dtype, so evaluation does not
        depend on this choice. A run-time choice, not part of the model: it is not saved
        (docs/benchmarks.md has the measured speed of each).

        Raises:
            ConfigError: an unknown kernel.
        """
        if kernel not in SCORE_KERNELS:
            raise ConfigError(f"kernel must be one of {', '.join(map(repr, SCORE_KERNELS))}; got {kernel!r}")
        if kernel == "compiled":
            self._scores_fn = torch.compile(glu_silu_scores, dynamic=True)
        elif kernel in ("blocked", "fused", "fused_cpp"):
            from mol_core.similarity.gating_blocked import glu_silu_scores_blocked

            self._scores_fn = glu_silu_scores_blocked
        else:
            self._scores_fn = glu_silu_scores
        self._mlp_dtype = mlp_dtype
        self._kernel = kernel

    @property
    def kernel(self) -> str:
        """The training-time kernel chosen by :meth:`set_scores_backend` (``"eager"`` until then)."""
        return self._kernel

    @property
    def mlp_dtype(self) -> torch.dtype | None:
        """The pair-wise MLP's training dtype set by :meth:`set_scores_backend` (``None``: the weights')."""
        return self._mlp_dtype

    def scores(
        self, logits: torch.Tensor, query_features: torch.Tensor, item_features: torch.Tensor
    ) -> torch.Tensor:
        """``(B, X)`` mixed scores without the weights (:func:`glu_silu_scores`); shapes as in forward."""
        mlp = self.logits_mlp
        scores_fn = self._scores_fn if self.training else glu_silu_scores
        return scores_fn(
            logits,
            query_features,
            item_features,
            mlp.hidden.weight,
            mlp.hidden.bias,
            mlp.out.weight,
            mlp.out.bias,
            self.dropout,
            self.training,
            self._mlp_dtype if self.training else None,
        )

    def reset_xavier(self) -> None:
        """Xavier-normal weights and zero biases in all three MLPs."""
        for mlp in (self.query_mlp, self.item_mlp, self.logits_mlp):
            mlp.reset_xavier()

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
