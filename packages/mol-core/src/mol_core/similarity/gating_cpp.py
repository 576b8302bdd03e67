"""Training-time MoL scores of query rows against their group's candidates, through a C++ gating kernel.

The same computation and contract as :func:`~mol_core.similarity.gating_grouped.mol_scores_grouped`
(per-sequence or batch-shared negatives: the rows of group ``g`` all meet the same ``X`` candidates), with
the pair-wise gating MLP, the gate and the mixture, forward and backward, in the fused C++ kernel
``mol_core/kernels/gating_train.cpp`` (x86-64 with AVX2 and FMA, built for AVX-512F where the CPU has
it): per tile of four pairs the hidden layer
stays in L1 and is recomputed in backward, so no ``(pairs, H)`` tensor is ever written, and the weight
gradients are summed in the kernel. Torch keeps the component logits' matrix products (one GEMM per
group, forward, and two backward), with ``1 / tau`` folded into the queries. The dropout mask is
:func:`~mol_core.similarity.gating_grouped.keep_mask`'s, drawn the same way, so both paths consume the
same random numbers.

The kernel is compiled on first use for each instruction set and padded shape (hidden width rounded up to
two vectors, ``P`` to one: 16 and 8 floats with AVX2, 32 and 16 with AVX-512) by
:mod:`mol_core.kernels.cpu_build`; :func:`mol_core.kernels.isa.instruction_set` says which build runs
(``MOL_CPU_ISA=avx2`` chooses the AVX2 build on an AVX-512 CPU). Its threads (``torch.get_num_threads()``)
split each group's pairs. It runs float32 only. :func:`unavailable_reason` says why it cannot run
(``MOL_CPU_KERNEL=0`` switches every C++ kernel off).

Shape symbols: M query rows, G groups, X candidates per group, Pq/Px components, P = Pq * Px, d component
width, H hidden units of the pair-wise gating MLP.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mol_core.errors import ShapeError
from mol_core.kernels import AVX2_MATH, SIMD
from mol_core.kernels.cpu_build import KernelUnavailable, load_library
from mol_core.kernels.isa import ISA_FLAGS, LANES, instruction_set
from mol_core.similarity.gating_grouped import check_grouped_inputs, keep_mask

__all__ = ["mol_scores_grouped_cpp", "unavailable_reason"]

SOURCE = AVX2_MATH.with_name("gating_train.cpp")
FLAGS = ("-O3", "-std=c++17", "-mavx2", "-mfma", "-pthread")
#: The largest padded hidden width and component count the kernel is built for (its tiles live on the stack).
MAX_HIDDEN = 1024
MAX_COMPONENTS = 256
_F32 = torch.float32  # every buffer the kernel reads or writes, whatever torch's default dtype


def _padded(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def _padded_shape(isa: str, hidden: int, num_components: int) -> tuple[int, int]:
    """The hidden width and ``P`` padded for the ``isa`` build: two vectors and one."""
    lanes = LANES[isa]
    return _padded(hidden, 2 * lanes), _padded(num_components, lanes)


@functools.cache
def _library(isa: str, hidden_padded: int, components_padded: int) -> ctypes.CDLL | str:
    """The kernel built for this instruction set and padded shape, or why there is none (memoised: a
    failed build is final)."""
    shape = (f"-DMOL_HIDDEN={hidden_padded}", f"-DMOL_COMPONENTS={components_padded}")
    flags = (*FLAGS, *ISA_FLAGS[isa], *shape)
    try:
        lib = load_library(Path(SOURCE), flags, (SIMD, AVX2_MATH))
    except KernelUnavailable as error:
        return str(error)
    sizes: list[Any] = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int]  # rows, cands, pq, px
    lib.mol_gating_forward.restype = ctypes.c_int
    lib.mol_gating_forward.argtypes = [*sizes, *[ctypes.c_void_p] * 10, ctypes.c_int]
    lib.mol_gating_backward.restype = ctypes.c_int
    lib.mol_gating_backward.argtypes = [*sizes, *[ctypes.c_void_p] * 18, ctypes.c_int]
    return lib


def unavailable_reason(hidden: int, num_components: int) -> str | None:
    """Why the kernel cannot run here for a gating MLP of this hidden width and ``P``, or ``None``."""
    if os.environ.get("MOL_CPU_KERNEL", "1").strip() == "0":
        return "disabled by MOL_CPU_KERNEL=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the kernel needs an x86-64 CPU; this one is {platform.machine()!r}"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"the kernel needs AVX2 and FMA; torch reports CPU capability {capability!r}"
    try:
        isa = instruction_set()
    except ValueError as error:
        return str(error)
    hidden_padded, components_padded = _padded_shape(isa, hidden, num_components)
    if hidden_padded > MAX_HIDDEN or components_padded > MAX_COMPONENTS:
        return (
            f"the kernel handles a gating hidden width <= {MAX_HIDDEN} and P <= {MAX_COMPONENTS}; got "
            f"{hidden} and {num_components}"
        )
    lib = _library(isa, hidden_padded, components_padded)
    return lib if isinstance(lib, str) else None


def _ptr(tensor: torch.Tensor) -> int:
    return tensor.data_ptr()


class _Layout:
    """The gating MLP's weights padded to the ``isa`` build's shape (Hp hidden units, Pp components):
    ``w1t (P, Hp)``, ``b1 (Hp)``, ``w2t (Hp, Pp)``, ``b2 (Pp)``, ``w1h (Hp, Pp)``, ``w2 (P, Hp)``, all
    float32 and contiguous."""

    def __init__(
        self, isa: str, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
    ) -> None:
        hidden, num_p = w1.shape
        self.isa = isa
        self.hidden_padded, self.components_padded = _padded_shape(isa, hidden, num_p)
        self.w1t = torch.zeros(num_p, self.hidden_padded, dtype=_F32)
        self.w1t[:, :hidden] = w1.t()
        self.b1 = torch.zeros(self.hidden_padded, dtype=_F32)
        self.b1[:hidden] = b1
        self.w2t = torch.zeros(self.hidden_padded, self.components_padded, dtype=_F32)
        self.w2t[:hidden, :num_p] = w2.t()
        self.b2 = torch.zeros(self.components_padded, dtype=_F32)
        self.b2[:num_p] = b2
        self.w1h = torch.zeros(self.hidden_padded, self.components_padded, dtype=_F32)
        self.w1h[:hidden, :num_p] = w1
        self.w2 = torch.zeros(num_p, self.hidden_padded, dtype=_F32)
        self.w2[:, :hidden] = w2


def _group_slices(group_sizes: Sequence[int]) -> list[tuple[int, slice]]:
    """``(group, rows)`` of every non-empty group."""
    out, start = [], 0
    for group, size in enumerate(group_sizes):
        if size:
            out.append((group, slice(start, start + size)))
        start += size
    return out


class _GroupedMoLCpp(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        queries: torch.Tensor,
        query_gating: torch.Tensor,
        items: torch.Tensor,
        item_gating: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        group_sizes: tuple[int, ...],
        inv_tau: float,
        dropout: float,
    ) -> torch.Tensor:
        rows, num_q, dim = queries.shape
        num_x, num_i, num_p = items.shape[1], items.shape[2], query_gating.shape[1]
        with torch.no_grad():
            layout = _Layout(instruction_set(), w1.float(), b1.float(), w2.float(), b2.float())
        lib = _library(layout.isa, layout.hidden_padded, layout.components_padded)
        assert not isinstance(lib, str)  # mol_scores_grouped_cpp checked unavailable_reason
        keep = keep_mask((rows, num_x, num_p), dropout, queries.device).view(torch.uint8)  # (M, X, P)
        scores = torch.empty(rows, num_x, dtype=_F32)  # (M, X)
        gate_logits = torch.empty(rows, num_x, num_p, dtype=_F32)  # (M, X, P)
        scaled = queries * inv_tau  # (M, Pq, d): the temperature folded into the queries
        logits = torch.empty(rows, num_q, num_x * num_i, dtype=_F32)  # (M, Pq, X Px)
        threads = torch.get_num_threads()
        for group, span in _group_slices(group_sizes):
            count = span.stop - span.start
            torch.mm(
                scaled[span].reshape(count * num_q, dim),
                items[group].reshape(num_x * num_i, dim).t(),
                out=logits[span].view(count * num_q, num_x * num_i),
            )
            status = lib.mol_gating_forward(
                count,
                num_x,
                num_q,
                num_i,
                _ptr(logits[span]),
                _ptr(query_gating[span]),
                _ptr(item_gating[group]),
                _ptr(keep[span]),
                _ptr(layout.w1t),
                _ptr(layout.b1),
                _ptr(layout.w2t),
                _ptr(layout.b2),
                _ptr(scores[span]),
                _ptr(gate_logits[span]),
                threads,
            )
            if status != 0:
                raise RuntimeError(f"mol_gating_forward rejected P = {num_p} (status {status})")
        ctx.save_for_backward(scaled, query_gating, items, item_gating, scores, keep, logits, gate_logits)
        ctx.layout, ctx.lib, ctx.group_sizes, ctx.inv_tau = layout, lib, group_sizes, inv_tau
        ctx.weight_dtypes = (w1.dtype, b1.dtype, w2.dtype, b2.dtype)
        ctx.num_hidden = w1.shape[0]
        return scores

    @staticmethod
    def backward(ctx: Any, grad_scores: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scaled, query_gating, items, item_gating, scores, keep, logits, gate_logits = ctx.saved_tensors
        layout, lib, inv_tau = ctx.layout, ctx.lib, ctx.inv_tau
        rows, num_q, dim = scaled.shape
        num_groups, num_x, num_i = items.shape[:3]
        num_p = num_q * num_i
        up = grad_scores.float().contiguous()  # (M, X)
        grad_logits = torch.empty(rows, num_q, num_x * num_i, dtype=_F32)  # (M, Pq, X Px)
        grad_qg = torch.zeros(rows, num_p, dtype=_F32)
        grad_items = torch.zeros(num_groups, num_x, num_i, dim, dtype=_F32)
        grad_ig = torch.zeros(num_groups, num_x, num_p, dtype=_F32)
        grad_q = torch.zeros(rows, num_q, dim, dtype=_F32)
        sums = [  # the weight gradients: w1 transposed (P, Hp), b1 (Hp), w2 (P, Hp), b2 (Pp)
            torch.zeros(num_p, layout.hidden_padded, dtype=_F32),
            torch.zeros(layout.hidden_padded, dtype=_F32),
            torch.zeros(num_p, layout.hidden_padded, dtype=_F32),
            torch.zeros(layout.components_padded, dtype=_F32),
        ]
        threads = torch.get_num_threads()
        for group, span in _group_slices(ctx.group_sizes):
            count = span.stop - span.start
            status = lib.mol_gating_backward(
                count,
                num_x,
                num_q,
                num_i,
                _ptr(logits[span]),
                _ptr(gate_logits[span]),
                _ptr(keep[span]),
                _ptr(scores[span]),
                _ptr(up[span]),
                _ptr(query_gating[span]),
                _ptr(item_gating[group]),
                _ptr(layout.w1t),
                _ptr(layout.b1),
                _ptr(layout.w1h),
                _ptr(layout.w2),
                _ptr(grad_logits[span]),
                _ptr(grad_qg[span]),
                _ptr(grad_ig[group]),
                *(_ptr(total) for total in sums),
                threads,
            )
            if status != 0:
                raise RuntimeError(f"mol_gating_backward rejected P = {num_p} (status {status})")
            grad_flat = grad_logits[span].view(count * num_q, num_x * num_i)  # (n Pq, X Px)
            grad_q[span] = (grad_flat @ items[group].reshape(num_x * num_i, dim)).view(count, num_q, dim)
            grad_items[group] = (grad_flat.t() @ scaled[span].reshape(count * num_q, dim)).view(
                num_x, num_i, dim
            )
        w1_dtype, b1_dtype, w2_dtype, b2_dtype = ctx.weight_dtypes
        num_hidden = ctx.num_hidden
        return (
            (grad_q * inv_tau).to(scaled.dtype),
            grad_qg.to(query_gating.dtype),
            grad_items.to(items.dtype),
            grad_ig.to(item_gating.dtype),
            sums[0][:, :num_hidden].t().to(w1_dtype),
            sums[1][:num_hidden].to(b1_dtype),
            sums[2][:, :num_hidden].to(w2_dtype),
            sums[3][:num_p].to(b2_dtype),
            None,
            None,
            None,
        )


def mol_scores_grouped_cpp(
    queries: torch.Tensor,
    query_gating: torch.Tensor,
    items: torch.Tensor,
    item_gating: torch.Tensor,
    group_sizes: Sequence[int],
    *,
    temperature: float,
    hidden_weight: torch.Tensor,
    hidden_bias: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    dropout: float,
) -> torch.Tensor:
    """Training-time MoL scores of every query row against its group's candidates, differentiable, through
    the C++ kernel; arguments, result and errors as
    :func:`~mol_core.similarity.gating_grouped.mol_scores_grouped` with a float32 MLP.

    Raises:
        ShapeError: as ``mol_scores_grouped``.
        KernelUnavailable: the kernel cannot run here or for this MLP (:func:`unavailable_reason`), or the
            inputs are not on the CPU.
    """
    sizes = check_grouped_inputs(queries, query_gating, items, item_gating, group_sizes)
    num_p = query_gating.shape[1]
    if hidden_weight.shape[1] != num_p:
        raise ShapeError(f"the gating MLP takes {hidden_weight.shape[1]} components; the inputs have {num_p}")
    reason = unavailable_reason(hidden_weight.shape[0], num_p)
    if reason is None and queries.device.type != "cpu":
        reason = f"the kernel runs on the CPU; the inputs are on {queries.device}"
    if reason is not None:
        raise KernelUnavailable(reason)
    scores: torch.Tensor = _GroupedMoLCpp.apply(  # type: ignore[no-untyped-call]
        queries.float().contiguous(),
        query_gating.float().contiguous(),
        items.float().contiguous(),
        item_gating.float().contiguous(),
        hidden_weight,
        hidden_bias,
        out_weight,
        out_bias,
        sizes,
        1.0 / temperature,
        dropout,
    )
    return scores
