"""Dot-product similarity: the two-tower baseline, as the ``Pq = Px = 1`` case of the shared interface."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mol_core._checks import check_positive_float, check_positive_int, shape_str
from mol_core.errors import ShapeError
from mol_core.similarity.base import ItemSide, QuerySide, Similarity

__all__ = ["DotProductSimilarity"]


class DotProductSimilarity(Similarity):
    """``phi(q, x) = <q, x> / temperature``, optionally on L2-normalised vectors (then a scaled cosine).

    It has no parameters: the query and item representations are the embeddings themselves.

    Args:
        dim: ``d``, the width of query and item representations.
        l2_normalize: normalise both sides first.
        temperature: divide the dot product by it.

    Example:
        >>> sim = DotProductSimilarity(64, l2_normalize=True, temperature=0.05)
        >>> scores = sim.score_corpus(sim.query_side(torch.randn(2, 64)), sim.item_side(torch.randn(10, 64)))
        >>> scores.shape
        torch.Size([2, 10])
    """

    def __init__(self, dim: int, *, l2_normalize: bool = False, temperature: float = 1.0) -> None:
        super().__init__(
            num_query_components=1,
            num_item_components=1,
            component_dim=check_positive_int("dim", dim),
            temperature=check_positive_float("temperature", temperature),
        )
        self.l2_normalize = l2_normalize

    def query_side(self, query_repr: torch.Tensor, user_repr: torch.Tensor | None = None) -> QuerySide:
        """``(B, d) -> (B, 1, d)``; ``user_repr`` is not supported (raises ShapeError when given)."""
        if user_repr is not None:
            raise ShapeError("DotProductSimilarity takes no user_repr; fold user features into the query")
        if query_repr.dim() != 2 or query_repr.shape[1] != self.component_dim:
            raise ShapeError(
                f"query_repr must have shape (B, {self.component_dim}); got {shape_str(query_repr.shape)}"
            )
        return QuerySide(self._prepare(query_repr).unsqueeze(1), None)  # (B, 1, d)

    def item_side(self, item_repr: torch.Tensor) -> ItemSide:
        """``(*, d) -> (*, 1, d)``."""
        if item_repr.dim() < 2 or item_repr.shape[-1] != self.component_dim:
            raise ShapeError(
                f"item_repr must have shape (N, {self.component_dim}) or (B, X, {self.component_dim}); "
                f"got {shape_str(item_repr.shape)}"
            )
        return ItemSide(self._prepare(item_repr).unsqueeze(-2), None)  # (*, 1, d)

    def mix(
        self, logits: torch.Tensor, query_gating: torch.Tensor | None, item_gating: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The single logit is the score; the weight of the only component is 1."""
        scores = logits.float().squeeze(-1)  # (B, X)
        return scores, torch.ones_like(scores).unsqueeze(-1)  # (B, X), (B, X, 1)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not self.l2_normalize:
            return x
        return F.normalize(x.float(), dim=-1, eps=1e-6).to(x.dtype)
