"""Mixture-of-Logits (Ding & Zhai, "Retrieval with Learned Similarities", WWW 2025).

    phi(q, x) = sum_{a, b} pi_ab(q, x) * <f_a(q), g_b(x)> / tau

with ``Pq`` L2-normalised query components ``f_a``, ``Px`` L2-normalised item components ``g_b`` of
dimension ``d`` and the gating weights ``pi`` of :class:`~mol_core.similarity.gating.GluSiluGating`.
Defaults are the paper's ML-1M configuration (8 x 4 x 64, tau 0.05, gating hidden 128, dropout 0.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mol_core._checks import check_fraction, check_positive_float, check_positive_int, check_rank, shape_str
from mol_core.errors import ConfigError, ShapeError
from mol_core.similarity.base import ItemSide, QuerySide, Similarity
from mol_core.similarity.gating import GluSiluGating
from mol_core.similarity.swiglu import SwiGLU

__all__ = ["MOL_INITS", "MoLSimilarity"]

#: Initialisations of :class:`MoLSimilarity`: PyTorch's defaults, or the reference recipe's (Xavier-normal
#: weights, zero biases in the item projection and the gating MLPs).
MOL_INITS = ("torch", "xavier")

_LAYER_NORM_EPS = 1e-6


class MoLSimilarity(Similarity):
    """Mixture-of-Logits similarity with ``glu_silu`` gating and optional user-id components.

    The query side projects the ``(B, Dq)`` query representation (optionally layer-normalised first) to
    ``Pq - Pu`` components, with one linear map or a SwiGLU hidden layer and a linear map, and, when
    ``user_components = Pu > 0``, a ``(B, Du)`` user representation (for example a hashed user-id
    embedding) to the remaining ``Pu`` components after its own dropout: projected linearly, or used as
    the components directly (``user_direct``, then ``Du = Pu * d``). The item side projects ``(*, Dx)``
    item representations (after ``item_dropout`` in training) to ``Px`` components. Every component is
    L2-normalised, so each component logit is a cosine divided by ``temperature``.

    Args:
        query_input_dim: ``Dq``.
        item_input_dim: ``Dx``.
        query_components: ``Pq``, all query components including the user ones.
        item_components: ``Px``.
        component_dim: ``d``.
        temperature: ``tau``.
        gating_hidden_dim: hidden units of each gating MLP.
        gating_dropout: dropout on the gating softmax during training.
        user_components: ``Pu``, how many of the ``Pq`` query components come from ``user_repr``.
        user_input_dim: ``Du``; required when ``user_components > 0``.
        user_dropout: dropout on ``user_repr`` during training.
        query_layer_norm: layer-normalise ``query_repr`` (no affine parameters, eps 1e-6) before the query
            projection and the query gating MLP.
        query_hidden_dim: SwiGLU hidden width of the query projection; 0 = one linear map.
        item_dropout: dropout on ``item_repr`` before the item projection during training.
        user_direct: use ``user_repr`` as the ``Pu`` user components directly (needs ``Du = Pu * d``).
        init: one of :data:`MOL_INITS`.

    Example:
        >>> sim = MoLSimilarity(query_input_dim=50, item_input_dim=50)
        >>> query = sim.query_side(torch.randn(2, 50))                # (B=2, Pq=8, d=64)
        >>> corpus = sim.item_side(torch.randn(1000, 50))             # (N=1000, Px=4, d=64)
        >>> sim.score_corpus(query, corpus).shape
        torch.Size([2, 1000])
    """

    def __init__(
        self,
        *,
        query_input_dim: int,
        item_input_dim: int,
        query_components: int = 8,
        item_components: int = 4,
        component_dim: int = 64,
        temperature: float = 0.05,
        gating_hidden_dim: int = 128,
        gating_dropout: float = 0.2,
        user_components: int = 0,
        user_input_dim: int | None = None,
        user_dropout: float = 0.0,
        query_layer_norm: bool = False,
        query_hidden_dim: int = 0,
        item_dropout: float = 0.0,
        user_direct: bool = False,
        init: str = "torch",
    ) -> None:
        super().__init__(
            num_query_components=query_components,
            num_item_components=item_components,
            component_dim=component_dim,
            temperature=check_positive_float("temperature", temperature),
        )
        self.query_input_dim = check_positive_int("query_input_dim", query_input_dim)
        self.item_input_dim = check_positive_int("item_input_dim", item_input_dim)
        if isinstance(user_components, bool) or not isinstance(user_components, int) or user_components < 0:
            raise ConfigError(f"user_components must be an integer >= 0; got {user_components!r}")
        if user_components >= query_components:
            raise ConfigError(
                f"user_components ({user_components}) must be less than "
                f"query_components ({query_components}): "
                "at least one query component comes from the query representation"
            )
        if user_components > 0 and user_input_dim is None:
            raise ConfigError("user_input_dim is required when user_components > 0")
        if user_components == 0 and user_input_dim is not None:
            raise ConfigError("user_input_dim is set but user_components is 0; set user_components >= 1")
        self.user_components = user_components
        self.user_input_dim = user_input_dim
        self.user_dropout = check_fraction("user_dropout", user_dropout)
        self.item_dropout = check_fraction("item_dropout", item_dropout)
        self.query_layer_norm = bool(query_layer_norm)
        if (
            isinstance(query_hidden_dim, bool)
            or not isinstance(query_hidden_dim, int)
            or query_hidden_dim < 0
        ):
            raise ConfigError(f"query_hidden_dim must be an integer >= 0; got {query_hidden_dim!r}")
        self.query_hidden_dim = query_hidden_dim
        if init not in MOL_INITS:
            raise ConfigError(f"init must be one of {', '.join(map(repr, MOL_INITS))}; got {init!r}")
        self.user_direct = bool(user_direct)
        if self.user_direct and user_components > 0 and user_input_dim != user_components * component_dim:
            raise ConfigError(
                f"user_direct uses the user representation as the {user_components} user component(s): "
                "user_input_dim must be user_components * component_dim = "
                f"{user_components * component_dim}; "
                f"got {user_input_dim}"
            )

        seq_width = (query_components - user_components) * component_dim
        self.query_proj: nn.Module = (
            nn.Sequential(SwiGLU(query_input_dim, query_hidden_dim), nn.Linear(query_hidden_dim, seq_width))
            if query_hidden_dim > 0
            else nn.Linear(query_input_dim, seq_width)
        )
        self.user_proj = (
            nn.Linear(check_positive_int("user_input_dim", user_input_dim), user_components * component_dim)
            if user_input_dim is not None and not self.user_direct
            else None
        )
        self.item_proj = nn.Linear(item_input_dim, item_components * component_dim)
        self.gating = GluSiluGating(
            query_input_dim=query_input_dim,
            item_input_dim=item_input_dim,
            num_components=self.num_components,
            hidden_dim=gating_hidden_dim,
            dropout=gating_dropout,
        )
        if init == "xavier":
            self._reset_xavier()

    @torch.no_grad()
    def _reset_xavier(self) -> None:
        """Xavier-normal weights everywhere; zero biases in the item projection and the gating MLPs; the
        query projection's output bias keeps PyTorch's default (as in the reference)."""
        self.gating.reset_xavier()
        nn.init.xavier_normal_(self.item_proj.weight)
        nn.init.zeros_(self.item_proj.bias)
        for layer in (self.query_proj, self.user_proj):
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
            elif isinstance(layer, nn.Sequential):
                swiglu, out = layer[0], layer[1]
                if isinstance(swiglu, SwiGLU) and isinstance(out, nn.Linear):
                    swiglu.reset_xavier()
                    nn.init.xavier_normal_(out.weight)

    def query_side(self, query_repr: torch.Tensor, user_repr: torch.Tensor | None = None) -> QuerySide:
        """Query components and gating features.

        Args:
            query_repr: ``(B, Dq)`` query representations (for example the sequence encoder's output).
            user_repr: ``(B, Du)`` user representations; required iff ``user_components > 0``.

        Returns:
            embeddings ``(B, Pq, d)`` (L2-normalised, user components last) and gating ``(B, P)``.
        """
        check_rank("query_repr", query_repr, ("B", self.query_input_dim))
        batch = query_repr.shape[0]
        if self.query_layer_norm:
            query_repr = F.layer_norm(query_repr, (self.query_input_dim,), eps=_LAYER_NORM_EPS)  # (B, Dq)
        parts = [self.query_proj(query_repr).view(batch, -1, self.component_dim)]  # (B, Pq - Pu, d)
        if self.user_components > 0:
            if user_repr is None:
                raise ShapeError(
                    f"user_repr of shape (B, {self.user_input_dim}) is required: user_components > 0"
                )
            check_rank("user_repr", user_repr, (batch, self.user_input_dim or 0))
            user_repr = F.dropout(user_repr, p=self.user_dropout, training=self.training)
            user = user_repr if self.user_proj is None else self.user_proj(user_repr)  # (B, Pu * d)
            parts.append(user.reshape(batch, -1, self.component_dim))  # (B, Pu, d)
        elif user_repr is not None:
            raise ShapeError("user_repr was given but this similarity has user_components = 0")
        embeddings = _l2_normalize(torch.cat(parts, dim=1))  # (B, Pq, d)
        return QuerySide(embeddings, self.gating.query_features(query_repr))

    def item_side(self, item_repr: torch.Tensor) -> ItemSide:
        """Item components and gating features.

        Args:
            item_repr: ``(*, Dx)`` item representations, e.g. ``(N, Dx)`` or ``(B, X, Dx)``.

        Returns:
            embeddings ``(*, Px, d)`` (L2-normalised) and gating ``(*, P)``.
        """
        if item_repr.dim() < 2 or item_repr.shape[-1] != self.item_input_dim:
            raise ShapeError(
                f"item_repr must have shape (N, {self.item_input_dim}) or (B, X, {self.item_input_dim}); "
                f"got {shape_str(item_repr.shape)}"
            )
        lead = item_repr.shape[:-1]
        projected = F.dropout(item_repr, p=self.item_dropout, training=self.training)  # (*, Dx)
        components = self.item_proj(projected).view(*lead, self.num_item_components, self.component_dim)
        return ItemSide(_l2_normalize(components), self.gating.item_features(item_repr))

    def mix(
        self, logits: torch.Tensor, query_gating: torch.Tensor | None, item_gating: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated mixture of the ``(B, X, P)`` component logits; see :meth:`Similarity.mix`."""
        if query_gating is None or item_gating is None:
            raise ShapeError("MoLSimilarity needs query and item gating features; build both sides with it")
        weights = self.gating(logits, query_gating, item_gating)  # (B, X, P) float32
        scores = (weights * logits.float()).sum(dim=-1)  # (B, X)
        return scores, weights

    def mix_scores(
        self, logits: torch.Tensor, query_gating: torch.Tensor | None, item_gating: torch.Tensor | None
    ) -> torch.Tensor:
        """The ``(B, X)`` scores of :meth:`mix` without materialising the weights (GluSiluGating.scores)."""
        if query_gating is None or item_gating is None:
            raise ShapeError("MoLSimilarity needs query and item gating features; build both sides with it")
        return self.gating.scores(logits, query_gating, item_gating)  # (B, X)

    def score_groups(self, query: QuerySide, items: ItemSide, group_sizes: Sequence[int]) -> torch.Tensor:
        """:meth:`Similarity.score_groups`; in training with the gating's ``"fused"`` kernel, through
        :func:`~mol_core.similarity.gating_grouped.mol_scores_grouped`, and with ``"fused_cpp"`` through
        :func:`~mol_core.similarity.gating_cpp.mol_scores_grouped_cpp` where :meth:`cpp_kernel_reason`
        is ``None`` (else as ``"fused"``)."""
        if not (self.training and self.gating.kernel in ("fused", "fused_cpp")):
            return super().score_groups(query, items, group_sizes)
        if query.gating is None or items.gating is None:
            raise ShapeError("MoLSimilarity needs query and item gating features; build both sides with it")
        self._check_query(query)
        if self.gating.kernel == "fused_cpp" and self.cpp_kernel_reason(query.embeddings.device) is None:
            from mol_core.similarity.gating_cpp import mol_scores_grouped_cpp

            options = self._fused_options()
            del options["mlp_dtype"]  # float32 (cpp_kernel_reason)
            return mol_scores_grouped_cpp(
                query.embeddings, query.gating, items.embeddings, items.gating, group_sizes, **options
            )
        from mol_core.similarity.gating_grouped import mol_scores_grouped

        return mol_scores_grouped(
            query.embeddings,
            query.gating,
            items.embeddings,
            items.gating,
            group_sizes,
            **self._fused_options(),
        )

    def score_gathered(self, query: QuerySide, table: ItemSide, index: torch.Tensor) -> torch.Tensor:
        """:meth:`Similarity.score_gathered`; in training with the gating's ``"fused"`` kernel, through
        :func:`~mol_core.similarity.gating_gathered.mol_scores_gathered` (never gathering the candidates of
        all rows at once)."""
        if not (self.training and self.gating.kernel in ("fused", "fused_cpp")):
            return super().score_gathered(query, table, index)
        if query.gating is None or table.gating is None:
            raise ShapeError("MoLSimilarity needs query and item gating features; build both sides with it")
        self._check_query(query)
        from mol_core.similarity.gating_gathered import mol_scores_gathered

        return mol_scores_gathered(
            query.embeddings,
            query.gating,
            table.embeddings,
            table.gating,
            index,
            **self._fused_options(),
        )

    def cpp_kernel_reason(self, device: torch.device | str = "cpu") -> str | None:
        """Why training-time grouped scoring cannot run through the C++ gating kernel here (on ``device``,
        with this head's MLP width and dtype), or ``None``
        (:func:`~mol_core.similarity.gating_cpp.unavailable_reason`)."""
        if torch.device(device).type != "cpu":
            return f"the C++ gating kernel runs on the CPU; this head trains on {device}"
        if self.gating.mlp_dtype not in (None, torch.float32):
            return f"the C++ gating kernel runs float32; the pair-wise MLP runs {self.gating.mlp_dtype}"
        from mol_core.similarity.gating_cpp import unavailable_reason

        mlp = self.gating.logits_mlp
        return unavailable_reason(mlp.hidden.out_features, self.num_components)

    def _fused_options(self) -> dict[str, Any]:
        """The keyword arguments the fused training kernels take from this head: temperature, the pair-wise
        gating MLP's weights, the softmax dropout and the MLP's dtype."""
        mlp = self.gating.logits_mlp
        return {
            "temperature": self.temperature,
            "hidden_weight": mlp.hidden.weight,
            "hidden_bias": mlp.hidden.bias,
            "out_weight": mlp.out.weight,
            "out_bias": mlp.out.bias,
            "dropout": self.gating.dropout,
            "mlp_dtype": self.gating.mlp_dtype,
        }


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalises the last dimension in float32 (bf16-safe) and returns the input dtype."""
    return F.normalize(x.float(), dim=-1, eps=1e-6).to(x.dtype)
