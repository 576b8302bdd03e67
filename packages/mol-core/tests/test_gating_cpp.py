"""The C++ training kernel of MoL's pair-wise gating (mol_core.similarity.gating_cpp) against the naive
autograd reference of test_similarity_blocks: scores and every gradient, dropout, odd shapes, threads,
and the fallbacks of the ``"fused_cpp"`` backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mol_core import ShapeError
from mol_core.kernels.cpu_build import KernelUnavailable
from mol_core.kernels.isa import builds_here, instruction_set
from mol_core.similarity import MoLSimilarity, gating_cpp, gating_grouped
from mol_core.similarity.gating_cpp import mol_scores_grouped_cpp
from mol_core.similarity.gating_grouped import keep_mask

from .test_similarity_blocks import naive_scores, small_mol

needs_kernel = pytest.mark.skipif(
    gating_cpp.unavailable_reason(16, 6) is not None,
    reason=f"the C++ gating kernel cannot run here: {gating_cpp.unavailable_reason(16, 6)}",
)


def _inputs(
    sizes: list[int], num_q: int, num_i: int, dim: int, hidden: int, num_x: int
) -> list[torch.Tensor]:
    num_p, rows = num_q * num_i, sum(sizes)
    return [
        F.normalize(torch.randn(rows, num_q, dim), dim=-1).requires_grad_(),
        torch.randn(rows, num_p, requires_grad=True),
        F.normalize(torch.randn(len(sizes), num_x, num_i, dim), dim=-1).requires_grad_(),
        torch.randn(len(sizes), num_x, num_p, requires_grad=True),
        (torch.randn(hidden, num_p) / 3).requires_grad_(),
        (torch.randn(hidden) / 3).requires_grad_(),
        (torch.randn(num_p, hidden) / 4).requires_grad_(),
        (torch.randn(num_p) / 3).requires_grad_(),
    ]


@needs_kernel
@pytest.mark.parametrize("isa", builds_here())
@pytest.mark.parametrize(
    ("sizes", "num_q", "num_i", "dim", "hidden", "num_x", "dropout", "threads"),
    [
        ([3, 0, 1, 6], 3, 2, 8, 16, 5, 0.3, 1),  # an empty and a one-row group; P = 6 (padded to 8 / 16)
        ([2, 5], 9, 4, 16, 20, 7, 0.2, 1),  # P = 36, hidden 20 (padded to 32), pairs not a multiple of 4
        ([4, 3], 17, 1, 8, 40, 6, 0.1, 1),  # P = 17: one lane in the last vector of either width
        ([40, 37], 4, 2, 8, 16, 33, 0.0, 2),  # enough pairs for two threads; no dropout
    ],
)
def test_cpp_kernel_equals_naive_reference(
    sizes: list[int],
    num_q: int,
    num_i: int,
    dim: int,
    hidden: int,
    num_x: int,
    dropout: float,
    threads: int,
    isa: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOL_CPU_ISA", isa)
    assert instruction_set() == isa
    torch.manual_seed(7)
    inputs = _inputs(sizes, num_q, num_i, dim, hidden, num_x)
    queries, query_gating, items, item_gating, *mlp = inputs
    upstream = torch.randn(sum(sizes), num_x)
    torch.manual_seed(8)
    keep = keep_mask((sum(sizes), num_x, num_q * num_i), dropout)
    want = naive_scores(queries, query_gating, items, item_gating, sizes, mlp, keep, 0.05)
    want_grads = torch.autograd.grad((want * upstream).sum(), inputs)
    torch.manual_seed(8)  # the kernel draws the same mask
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = mol_scores_grouped_cpp(
            queries,
            query_gating,
            items,
            item_gating,
            sizes,
            temperature=0.05,
            hidden_weight=mlp[0],
            hidden_bias=mlp[1],
            out_weight=mlp[2],
            out_bias=mlp[3],
            dropout=dropout,
        )
        got_grads = torch.autograd.grad((got * upstream).sum(), inputs)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad, atol=1e-3, rtol=1e-4)


@needs_kernel
def test_cpp_kernel_refuses_bad_shapes_and_devices() -> None:
    torch.manual_seed(0)
    queries, query_gating, items, item_gating, *mlp = _inputs([2, 3], 3, 2, 8, 16, 4)
    options = {
        "temperature": 0.05,
        "hidden_weight": mlp[0],
        "hidden_bias": mlp[1],
        "out_weight": mlp[2],
        "out_bias": mlp[3],
        "dropout": 0.0,
    }
    with pytest.raises(ShapeError, match="group_sizes"):
        mol_scores_grouped_cpp(queries, query_gating, items, item_gating, [2, 2], **options)
    wide = {**options, "hidden_weight": torch.randn(16, 7)}
    with pytest.raises(ShapeError, match="gating MLP takes"):
        mol_scores_grouped_cpp(queries, query_gating, items, item_gating, [2, 3], **wide)
    huge = {**options, "hidden_weight": torch.randn(2000, 6)}
    with pytest.raises(KernelUnavailable, match="hidden width"):
        mol_scores_grouped_cpp(queries, query_gating, items, item_gating, [2, 3], **huge)


def test_a_bad_mol_cpu_isa_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOL_CPU_ISA", "sse4")
    assert "MOL_CPU_ISA must be one of" in str(gating_cpp.unavailable_reason(16, 6))


def test_switched_off_kernel_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOL_CPU_KERNEL", "0")
    assert gating_cpp.unavailable_reason(16, 6) == "disabled by MOL_CPU_KERNEL=0"
    sim = small_mol()
    assert sim.cpp_kernel_reason() == "disabled by MOL_CPU_KERNEL=0"


@pytest.mark.parametrize("reason", ["kernel", "bf16", "device"])
def test_fused_cpp_falls_back_to_fused_where_the_kernel_cannot_run(
    reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``"fused_cpp"`` scores through the compiled torch kernel when the C++ one cannot take the head."""
    sim = small_mol()
    sim.gating.set_scores_backend(kernel="fused_cpp", mlp_dtype=torch.bfloat16 if reason == "bf16" else None)
    if reason == "kernel":
        monkeypatch.setenv("MOL_CPU_KERNEL", "0")
    if reason == "device":
        assert "runs on the CPU" in str(MoLSimilarity.cpp_kernel_reason(sim, "meta"))
        return
    assert sim.cpp_kernel_reason() is not None
    calls: list[str] = []
    original = gating_grouped.mol_scores_grouped

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append("fused")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gating_grouped, "mol_scores_grouped", spy)
    monkeypatch.setattr(gating_cpp, "mol_scores_grouped_cpp", None)  # any call would fail
    query = sim.query_side(torch.randn(4, 12))
    items = sim.item_side(torch.randn(2, 5, 10))
    sim.score_groups(query, items, [1, 3])
    assert calls == ["fused"]


@needs_kernel
def test_fused_cpp_backend_trains_through_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """In training the ``"fused_cpp"`` head calls the C++ path and matches the plain path (no dropout)."""
    torch.manual_seed(5)
    sim = small_mol(dropout=0.0)
    query = sim.query_side(torch.randn(10, 12))
    items = sim.item_side(torch.randn(4, 5, 10))
    sizes = [3, 0, 1, 6]
    plain = sim.score_groups(query, items, sizes)
    sim.gating.set_scores_backend(kernel="fused_cpp")
    assert sim.cpp_kernel_reason() is None
    monkeypatch.setattr(gating_grouped, "mol_scores_grouped", None)  # any call would fail
    got = sim.score_groups(query, items, sizes)
    torch.testing.assert_close(got, plain, atol=1e-4, rtol=1e-5)
    params = [p for p in sim.parameters() if p.requires_grad]
    got_grads = torch.autograd.grad(got.sum(), params, retain_graph=True, allow_unused=True)
    want_grads = torch.autograd.grad(plain.sum(), params, retain_graph=True, allow_unused=True)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        assert (got_grad is None) == (want_grad is None)
        if got_grad is not None and want_grad is not None:
            torch.testing.assert_close(got_grad, want_grad, atol=1e-3, rtol=1e-4)
