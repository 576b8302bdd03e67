"""Exact top-k kernels and the one dispatcher that picks between them.

- the torch reference: :func:`mol_index.search.exact.exact_search` (blockwise, any device, any similarity);
- :mod:`mol_index.kernels.mol_cpu`: the fused C++ kernel (MoL on x86-64 CPUs with AVX2 and FMA), compiled
  on first use by :mod:`mol_core.kernels.cpu_build`;
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
    """``"triton"``, ``"cpu"``, ``"torch-bf16"`` or ``"torch"``: what ``kernel`` (``auto``, ``torch``,
    ``torch-bf16``, ``cpu``, ``triton``) means for this similarity on ``device``. ``auto`` takes Triton on
    CUDA when it is installed and the similarity fits, the C++ kernel on the CPU when it builds here and
    the similarity fits, else torch; it never takes ``torch-bf16``, which only runs when asked for.

    Raises:
        ConfigError: ``triton`` or ``cpu`` asked for where that kernel cannot run (the reason is named).
    """
    if kernel in ("torch", "torch-bf16"):
        return kernel
    if kernel == "cpu" or (kernel == "auto" and device.type == "cpu"):
        from mol_index.kernels import mol_cpu

        reason = (
            (f"the index is on {device}" if device.type != "cpu" else None)
            or mol_cpu.unavailable_reason()
            or mol_cpu.unsupported_reason(similarity)
        )
        if kernel == "cpu" and reason is not None:
            raise ConfigError(f"kernel='cpu' cannot search this index: {reason}")
        return "torch" if reason is not None else "cpu"
    if kernel == "auto" and device.type != "cuda":
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
    :func:`mol_index.search.exact.exact_search` returns them. Under ``auto``, inputs the C++ kernel cannot
    take (not float32, say) go to torch; under ``cpu`` they raise.

    Raises:
        ConfigError: as :func:`choose_kernel`, or a bad ``k`` / ``block_size``.
        ShapeError: inputs that do not fit the similarity.
    """
    chosen = choose_kernel(kernel, similarity, corpus.embeddings.device)
    if chosen == "triton":
        from mol_index.kernels.triton_topk import triton_exact_search

        assert isinstance(similarity, MoLSimilarity)  # unsupported_reason admits MoL only
        return triton_exact_search(similarity, query, corpus, k, exclude=exclude)
    if chosen == "cpu":
        from mol_index.kernels import mol_cpu

        assert isinstance(similarity, MoLSimilarity)  # unsupported_reason admits MoL only
        reason = mol_cpu.unsupported_reason(similarity, query, corpus)
        if reason is None:
            return mol_cpu.cpu_exact_search(similarity, query, corpus, k, exclude=exclude)
        if kernel == "cpu":
            raise ConfigError(f"kernel='cpu' cannot search these inputs: {reason}")
    from mol_index.search.exact import exact_search

    dtype = torch.bfloat16 if chosen == "torch-bf16" else None
    return exact_search(
        similarity, query, corpus, k, exclude=exclude, block_size=block_size, compute_dtype=dtype
    )
