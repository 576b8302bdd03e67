"""Exact MoL top-k on x86-64 CPUs through the fused C++ kernel ``mol_cpu.cpp`` (AVX2 and FMA, or AVX-512F).

The kernel computes a (query, item) pair's component logits, the gating MLP, the gate and the mixture in
registers and writes only the ``(B, N)`` scores; no ``(B, N, P)`` or ``(B, N, H)`` tensor exists. It is
compiled on first use (:mod:`mol_core.kernels.cpu_build`) and called through ``ctypes``, which releases
the GIL. Its threads split the items; there are ``torch.get_num_threads()`` of them. One source has two
builds (``mol_core/kernels/simd.h``): AVX-512F where torch reports an AVX-512 CPU and the component
dimension is a multiple of 16, else AVX2 (:func:`mol_core.kernels.isa.instruction_set`;
``MOL_CPU_ISA=avx2`` chooses the AVX2 build everywhere).

Scores agree with :meth:`MoLSimilarity.score_pairs` to about ``1e-5`` (a polynomial ``exp``, and a
different order of the sums); every pair is computed by the same instruction sequence wherever it sits
in the corpus, so equal items get equal scores and the tie rule of :func:`exact_search` holds.

Set ``MOL_CPU_KERNEL=0`` to keep ``kernel="auto"`` on the torch path.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mol_core.errors import ShapeError
from mol_core.kernels import AVX2_MATH, SIMD
from mol_core.kernels.cpu_build import KernelUnavailable, load_library
from mol_core.kernels.isa import ISA_FLAGS, LANES, instruction_set
from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide, Similarity
from mol_core.similarity.gating import GatingMLP, GluSiluGating
from mol_index._inputs import Exclude
from mol_index.search.exact import blockwise_topk, check_exact_inputs

__all__ = [
    "GatheredScorer",
    "cpu_exact_search",
    "cpu_score_corpus",
    "cpu_score_gathered",
    "unavailable_reason",
    "unsupported_reason",
    "usable",
]

SOURCE = Path(__file__).with_name("mol_cpu.cpp")
FLAGS = ("-O3", "-std=c++17", "-mavx2", "-mfma", "-pthread")
#: Query-item pairs per block of the top-k scan: the kernel's threads split a block's items.
BLOCK_PAIRS = 1 << 18
_F32 = torch.float32  # every buffer the kernel reads or writes, whatever torch's default dtype

#: The methods that define MoL's score; a subclass that overrides one is not what the kernel computes.
_SCORING_METHODS = {
    name: getattr(MoLSimilarity, name) for name in ("component_logits", "mix", "mix_scores", "score_pairs")
}


@functools.cache
def _library(isa: str) -> ctypes.CDLL | str:
    """The kernel's ``isa`` build, loaded, or why there is none (memoised: a failed build is not retried)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"the kernel needs an x86-64 CPU; this one is {platform.machine()!r}"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"the kernel needs AVX2 and FMA; torch reports CPU capability {capability!r}"
    try:
        lib = load_library(SOURCE, (*FLAGS, *ISA_FLAGS[isa]), (SIMD, AVX2_MATH))
    except KernelUnavailable as error:
        return str(error)
    # (batch, items or width) as int64, then (pq, px, d, h_pad, threads) as int
    sizes: list[Any] = [ctypes.c_int64] * 2 + [ctypes.c_int] * 5
    lib.mol_cpu_scores.restype = ctypes.c_int
    lib.mol_cpu_scores.argtypes = [ctypes.c_void_p] * 8 + sizes + [ctypes.c_void_p, ctypes.c_int64]
    lib.mol_cpu_scores_gathered.restype = ctypes.c_int
    # out, out_stride, features, query_stride, row_stride, with_gating
    outputs: list[Any] = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int,
    ]
    lib.mol_cpu_scores_gathered.argtypes = [ctypes.c_void_p] * 9 + sizes + outputs
    lib.mol_cpu_vector_floats.restype = ctypes.c_int
    if lib.mol_cpu_vector_floats() != LANES[isa]:
        return f"the {isa} build of the kernel reports {lib.mol_cpu_vector_floats()} floats per vector"
    return lib


def _build_for(dim: int) -> str:
    """The build that scores components of width ``dim``: this CPU's, but AVX2 where AVX-512's vectors
    do not divide ``dim``."""
    isa = instruction_set()
    return "avx2" if dim % LANES[isa] else isa


def unavailable_reason() -> str | None:
    """Why the kernel cannot run on this machine (disabled, wrong CPU, no compiler), or ``None``."""
    if os.environ.get("MOL_CPU_KERNEL", "1").strip() == "0":
        return "disabled by MOL_CPU_KERNEL=0"
    try:
        isa = instruction_set()
    except ValueError as error:
        return str(error)
    for build in dict.fromkeys([isa, "avx2"]):  # the AVX2 build serves widths AVX-512 does not divide
        lib = _library(build)
        if isinstance(lib, str):
            return lib
    return None


def _padded(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def _pair_mlp(similarity: Similarity) -> GatingMLP | None:
    gating = getattr(similarity, "gating", None)
    if not isinstance(gating, GluSiluGating) or not isinstance(gating.logits_mlp, GatingMLP):
        return None
    mlp = gating.logits_mlp
    return mlp if isinstance(mlp.hidden, nn.Linear) and isinstance(mlp.out, nn.Linear) else None


def unsupported_reason(
    similarity: Similarity, query: QuerySide | None = None, corpus: ItemSide | None = None
) -> str | None:
    """Why the kernel cannot score this similarity (and these inputs, when given), or ``None``."""
    if not isinstance(similarity, MoLSimilarity):
        return f"the kernel scores MoLSimilarity only; got {type(similarity).__name__}"
    kind = type(similarity)
    changed = [name for name, method in _SCORING_METHODS.items() if getattr(kind, name) is not method]
    if changed:
        return f"{kind.__name__} overrides MoL's scoring ({', '.join(changed)}); the kernel computes MoL's"
    mlp = _pair_mlp(similarity)
    if mlp is None:
        return "the kernel needs the glu_silu gating with a Linear-SiLU-Linear pair-wise MLP"
    if similarity.training or similarity.gating.training:
        return "the similarity is in training mode (gating dropout); call eval()"
    if similarity.component_dim % 8 != 0:
        return f"the kernel needs a component dimension d divisible by 8; got {similarity.component_dim}"
    if _padded(similarity.num_components, 8) > 256:
        return f"the kernel handles P <= 256 components; got {similarity.num_components}"
    if _padded(mlp.hidden.out_features, 16) > 1024:
        return f"the kernel handles a gating hidden width <= 1024; got {mlp.hidden.out_features}"
    tensors: list[torch.Tensor | None] = [mlp.hidden.weight, mlp.hidden.bias, mlp.out.weight, mlp.out.bias]
    if query is not None:
        tensors += [query.embeddings, query.gating]
    if corpus is not None:
        if corpus.embeddings.dim() != 3:
            return "the kernel scores a shared corpus (N, Px, d)"
        tensors += [corpus.embeddings, corpus.gating]
    for tensor in tensors:
        if tensor is None:
            return "the kernel needs query and item gating features"
        if tensor.device.type != "cpu" or tensor.dtype != torch.float32:
            return f"the kernel needs float32 tensors on the CPU; got {tensor.dtype} on {tensor.device}"
    return None


class _Prepared:
    """The padded query side and gating weights of one search, in the layouts the kernel reads."""

    def __init__(self, similarity: MoLSimilarity, query: QuerySide) -> None:
        mlp = _pair_mlp(similarity)
        assert mlp is not None
        assert query.gating is not None
        batch, pq, dim = query.embeddings.shape
        p, hidden = similarity.num_components, mlp.hidden.out_features
        build = _build_for(dim)
        lanes, lib = LANES[build], _library(build)
        assert not isinstance(lib, str)  # unavailable_reason built both
        self.lib = lib
        p_pad, h_pad = _padded(p, lanes), _padded(hidden, 2 * lanes)  # a vector; two vectors
        self.pq, self.px, self.dim, self.h_pad = pq, similarity.num_item_components, dim, h_pad
        self.fq = torch.zeros(batch, _padded(pq, 8), dim, dtype=_F32)  # (B, pq8, d)
        self.fq[:, :pq] = query.embeddings / similarity.temperature
        self.qf = torch.zeros(batch, p_pad, dtype=_F32)  # (B, p_pad)
        self.qf[:, :p] = query.gating
        self.w1t = torch.zeros(p, h_pad, dtype=_F32)  # (P, h_pad)
        self.w1t[:, :hidden] = mlp.hidden.weight.detach().T
        self.b1 = torch.zeros(h_pad, dtype=_F32)
        self.b1[:hidden] = mlp.hidden.bias.detach()
        self.w2t = torch.zeros(h_pad, p_pad, dtype=_F32)  # (h_pad, p_pad)
        self.w2t[:hidden, :p] = mlp.out.weight.detach().T
        self.b2 = torch.zeros(p_pad, dtype=_F32)
        self.b2[:p] = mlp.out.bias.detach()

    def scores(self, corpus: ItemSide, start: int, stop: int) -> torch.Tensor:
        """``(B, stop - start)`` scores of corpus rows ``start .. stop - 1``."""
        assert corpus.gating is not None
        items = corpus.embeddings[start:stop].contiguous()  # (n, Px, d)
        gating = corpus.gating[start:stop].contiguous()  # (n, P)
        out = torch.empty(self.fq.shape[0], stop - start, dtype=_F32)  # (B, n)
        status = self.lib.mol_cpu_scores(
            self.fq.data_ptr(),
            self.qf.data_ptr(),
            items.data_ptr(),
            gating.data_ptr(),
            self.w1t.data_ptr(),
            self.b1.data_ptr(),
            self.w2t.data_ptr(),
            self.b2.data_ptr(),
            self.fq.shape[0],
            stop - start,
            self.pq,
            self.px,
            self.dim,
            self.h_pad,
            torch.get_num_threads(),
            out.data_ptr(),
            out.shape[1],
        )
        if status != 0:  # unsupported_reason checks the same limits first
            raise RuntimeError(f"mol_cpu_scores rejected the shapes (status {status})")
        return out


def usable(similarity: Similarity, query: QuerySide, corpus: ItemSide) -> bool:
    """Whether the kernel runs here and takes these inputs (what the approximate searches' reranks ask)."""
    return unavailable_reason() is None and unsupported_reason(similarity, query, corpus) is None


class GatheredScorer:
    """Scores per-query candidate rows with the kernel; the query side and the gating weights are laid out
    once, for every call (the linearized search scores its candidates in several rounds).

    Raises (on construction):
        KernelUnavailable: as :func:`cpu_score_corpus`.
        ShapeError: ``query`` and ``corpus`` do not fit ``similarity``.
    """

    def __init__(self, similarity: MoLSimilarity, query: QuerySide, corpus: ItemSide) -> None:
        _check(similarity, query, corpus)
        similarity.check_corpus_inputs(query, corpus)
        assert corpus.gating is not None  # _check requires gating
        self._num_p = similarity.num_components
        self._num_items = corpus.num_items
        with torch.inference_mode():
            self._prepared = _Prepared(similarity, query)
        self._items = corpus.embeddings.contiguous()
        self._gating = corpus.gating.contiguous()

    def __call__(
        self, rows: torch.Tensor, *, with_logits: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, X)`` float32 scores of query ``b`` against corpus rows ``rows[b]``, and, with
        ``with_logits``, their ``(B, X, P)`` component logits (as :meth:`Similarity.component_logits`).

        Args:
            rows: ``(B, X)`` int64 corpus rows, every one in ``[0, N)`` (clamp padding, mask it after).

        Raises:
            ShapeError: ``rows`` is not ``(B, X)`` or holds a row outside ``[0, N)``.
        """
        scores = torch.empty(rows.shape, dtype=_F32)  # (B, X)
        logits = torch.empty(*rows.shape, self._num_p, dtype=_F32) if with_logits else None  # (B, X, P)
        self.score_into(rows, scores, logits)
        return scores, logits

    def score_into(
        self, rows: torch.Tensor, scores: torch.Tensor, features: torch.Tensor | None = None
    ) -> None:
        """Writes the scores of ``rows`` into ``scores`` and, when given, their features into ``features``:
        the ``P`` component logits, followed by the items' ``P`` gating features when ``features`` is
        ``2P`` wide. Both may be views into larger buffers (a search's candidates of every round).

        Args:
            rows: ``(B, X)`` int64 corpus rows, every one in ``[0, N)``.
            scores: ``(B, X)`` float32 with unit stride along ``X``.
            features: ``(B, X, P)`` or ``(B, X, 2P)`` float32 with unit stride along the last dimension.

        Raises:
            ShapeError: ``rows`` is not ``(B, X)`` or holds a row outside ``[0, N)``, or an output has
                another shape, dtype or layout.
        """
        prepared = self._prepared
        batch = prepared.fq.shape[0]
        if rows.dim() != 2 or rows.shape[0] != batch:
            raise ShapeError(f"rows must have shape (B={batch}, X); got {tuple(rows.shape)}")
        rows = rows.to(torch.int64).contiguous()
        if rows.numel():
            low, high = torch.aminmax(rows)
            if int(low) < 0 or int(high) >= self._num_items:
                raise ShapeError(f"rows must lie in [0, N={self._num_items}); got {int(low)}..{int(high)}")
        if (
            scores.shape != rows.shape
            or scores.dtype != _F32
            or (rows.shape[1] > 1 and scores.stride(1) != 1)
        ):
            raise ShapeError(f"scores must be float32 {tuple(rows.shape)} with unit stride along X")
        widths = (self._num_p, 2 * self._num_p)
        if features is not None and (
            features.dim() != 3
            or features.shape[:2] != rows.shape
            or features.shape[2] not in widths
            or features.dtype != _F32
            or features.stride(2) != 1
        ):
            raise ShapeError(
                f"features must be float32 {tuple(rows.shape)} x (P = {widths[0]} or 2P = {widths[1]}) with "
                f"unit stride along the last dimension; got {features.dtype} {tuple(features.shape)}"
            )
        status = prepared.lib.mol_cpu_scores_gathered(
            prepared.fq.data_ptr(),
            prepared.qf.data_ptr(),
            self._items.data_ptr(),
            self._gating.data_ptr(),
            prepared.w1t.data_ptr(),
            prepared.b1.data_ptr(),
            prepared.w2t.data_ptr(),
            prepared.b2.data_ptr(),
            rows.data_ptr(),
            rows.shape[0],
            rows.shape[1],
            prepared.pq,
            prepared.px,
            prepared.dim,
            prepared.h_pad,
            torch.get_num_threads(),
            scores.data_ptr(),
            scores.stride(0),
            None if features is None else features.data_ptr(),
            0 if features is None else features.stride(0),
            0 if features is None else features.stride(1),
            int(features is not None and features.shape[2] == widths[1]),
        )
        if status != 0:
            raise RuntimeError(f"mol_cpu_scores_gathered rejected the shapes (status {status})")


def cpu_score_gathered(
    similarity: MoLSimilarity,
    query: QuerySide,
    corpus: ItemSide,
    rows: torch.Tensor,
    *,
    with_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores of per-query candidates: ``(B, X)`` float32, query ``b`` against corpus rows ``rows[b]``, and,
    with ``with_logits``, their ``(B, X, P)`` component logits (as :meth:`Similarity.component_logits`).
    One call of :class:`GatheredScorer`.

    Args:
        rows: ``(B, X)`` int64 corpus rows, every one in ``[0, N)`` (clamp padding, mask it after).

    Raises:
        KernelUnavailable: as :func:`cpu_score_corpus`.
        ShapeError: ``rows`` is not ``(B, X)`` or holds a row outside ``[0, N)``.
    """
    return GatheredScorer(similarity, query, corpus)(rows, with_logits=with_logits)


def _check(similarity: Similarity, query: QuerySide, corpus: ItemSide) -> None:
    reason = unavailable_reason() or unsupported_reason(similarity, query, corpus)
    if reason is not None:
        raise KernelUnavailable(reason)


def cpu_score_corpus(similarity: MoLSimilarity, query: QuerySide, corpus: ItemSide) -> torch.Tensor:
    """``(B, N)`` float32 scores of every query against the whole corpus ``(N, Px, d)``.

    Raises:
        KernelUnavailable: the kernel cannot run here or cannot score these inputs (the reason is named).
    """
    _check(similarity, query, corpus)
    with torch.inference_mode():
        return _Prepared(similarity, query).scores(corpus, 0, corpus.num_items)


def cpu_exact_search(
    similarity: MoLSimilarity,
    query: QuerySide,
    corpus: ItemSide,
    k: int,
    *,
    exclude: Exclude | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~mol_index.search.exact.exact_search` with the blocks scored by the fused kernel: the same
    arguments (but ``block_size``), the same ``(B, k)`` scores and rows, the same tie rule.

    Raises:
        KernelUnavailable: as :func:`cpu_score_corpus`.
        ConfigError, ShapeError: as :func:`~mol_index.search.exact.exact_search`.
    """
    excluded = check_exact_inputs(similarity, query, corpus, k, exclude)
    _check(similarity, query, corpus)
    with torch.inference_mode():
        prepared = _Prepared(similarity, query)
        block = max(64, BLOCK_PAIRS // max(1, query.batch_size))
        return blockwise_topk(
            lambda start, stop: prepared.scores(corpus, start, stop),
            corpus.num_items,
            query.batch_size,
            k,
            excluded,
            block,
        )
