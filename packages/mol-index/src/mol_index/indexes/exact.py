"""``IndexExact``: the item side and a torch GEMM candidate stage; exact scans and RAILS (kind ``exact``)."""

from __future__ import annotations

import torch

from mol_core.errors import ShapeError
from mol_core.similarity import DotProductSimilarity, ItemSide, Similarity
from mol_index.index import MolIndex, check_item_ids

__all__ = ["IndexExact", "checked_corpus"]


class IndexExact(MolIndex):
    """Exact top-k (:class:`~mol_index.params.ExactParams`, any device) and RAILS over the exact GEMM stage
    (:class:`~mol_index.params.RailsParams`, whose bound can prove results exact).

    Example:
        ``index = IndexExact.from_items(similarity, ids, items); scores, ids = index.search(q, 10)``
    """

    @classmethod
    def from_items(
        cls, similarity: Similarity, item_ids: torch.Tensor, items: ItemSide | torch.Tensor
    ) -> IndexExact:
        """An exact index over ``N`` items.

        Args:
            similarity: a ``MoLSimilarity`` or ``DotProductSimilarity`` (the index stores its parameters).
            item_ids: ``(N,)`` distinct non-negative integer external ids.
            items: the ``(N, Px, d)`` item side, or ``(N, Dx)`` item representations that go through
                ``similarity.item_side``.

        Raises:
            ConfigError: duplicate or negative ids.
            ShapeError: ids and items disagree on ``N`` or the items do not fit the similarity.
        """
        corpus = checked_corpus(similarity, items)
        return cls(similarity, check_item_ids(torch.as_tensor(item_ids), corpus.num_items), corpus)


def checked_corpus(similarity: Similarity, items: ItemSide | torch.Tensor) -> ItemSide:
    """``items`` as a float32 contiguous item side that fits ``similarity`` (``(N, Dx)`` representations go
    through ``similarity.item_side``).

    Raises:
        ShapeError: embeddings not ``(N, Px, d)`` of the similarity, or gating missing or not ``(N, P)``.
    """
    similarity = similarity.eval()
    if isinstance(items, torch.Tensor):
        with torch.inference_mode():
            items = similarity.item_side(items)
    emb = items.embeddings
    want = (similarity.num_item_components, similarity.component_dim)
    if emb.dim() != 3 or tuple(emb.shape[1:]) != want:
        raise ShapeError(
            f"item embeddings must have shape (N, Px={want[0]}, d={want[1]}); got {tuple(emb.shape)}"
        )
    num_p = similarity.num_components
    if items.gating is None and not isinstance(similarity, DotProductSimilarity):
        raise ShapeError(f"item gating features of shape (N, P={num_p}) are required for this similarity")
    if items.gating is not None and tuple(items.gating.shape) != (emb.shape[0], num_p):
        raise ShapeError(
            f"item gating must have shape (N={emb.shape[0]}, P={num_p}); got {tuple(items.gating.shape)}"
        )
    return ItemSide(
        emb.detach().float().contiguous(),
        None if items.gating is None else items.gating.detach().float().contiguous(),
    )
