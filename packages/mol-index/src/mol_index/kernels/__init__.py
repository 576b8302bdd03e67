"""Exact top-k kernels and the one dispatcher that picks between them.

- the torch reference: :func:`mol_index.search.exact.exact_search` (blockwise, any device, any similarity);
- :mod:`mol_index.kernels.triton_topk`: the fused Triton kernel (MoL on CUDA, or on the CPU under
  ``TRITON_INTERPRET=1``; the optional ``triton`` extra), imported only when used.

:func:`exact_topk` runs one of them as :attr:`mol_index.params.ExactParams.kernel` asks.
"""

from __future__ import annotations

import torch

from mol_core.errors import ConfigError
from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide, Similarity

__all__ = ["choose_kernel", "exact_topk"]


def choose_kernel(kernel: str, similarity: Similarity, device: torch.device) -> str:
    """``"triton"`` or ``"torch"``: what ``kernel`` (``auto``, ``torch``, ``triton``) means for this
    similarity on ``device``; ``auto`` takes Triton on CUDA when it is installed and the similarity fits.

    Raises:
        ConfigError: ``triton`` asked for a similarity the kernel cannot score (the reason is named).
    """
    if kernel == "torch" or (kernel == "auto" and device.type != "cuda"):
        return "torch"
    from mol_index.kernels import triton_topk

    reason = triton_topk.unsupported_reason(similarity)
    if kernel == "triton" and reason is not None:
        raise ConfigError(f"kernel='triton' cannot search this index: {reason}")
    return "torch" if reason is not None else "triton"


def exact_topk(
    similarity: Similarity,
    query: QuerySide,
    corpus: ItemSide,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    kernel: str = "auto",
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k rows by the kernel :func:`choose_kernel` picks: ``(B, k)`` scores and rows, as
    :func:`mol_index.search.exact.exact_search` returns them.

    Raises:
        ConfigError: as :func:`choose_kernel`, or a bad ``k`` / ``block_size``.
        ShapeError: inputs that do not fit the similarity.
    """
    if choose_kernel(kernel, similarity, corpus.embeddings.device) == "triton":
        from mol_index.kernels.triton_topk import triton_exact_search

        assert isinstance(similarity, MoLSimilarity)  # unsupported_reason admits MoL only
        return triton_exact_search(similarity, query, corpus, k, exclude=exclude)
    from mol_index.search.exact import exact_search

    return exact_search(similarity, query, corpus, k, exclude=exclude, block_size=block_size)
