"""Scoring query rows in groups against per-group candidates (per-sequence negatives), and against
candidates of their own gathered from a table (per-position negatives): the plain paths against
``score_pairs``, and MoL's fused kernels against a naive autograd reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mol_core import ShapeError
from mol_core.similarity import (
    DotProductSimilarity,
    ItemSide,
    MoLSimilarity,
    QuerySide,
    Similarity,
    gating_gathered,
    gating_grouped,
)
from mol_core.similarity.gating_gathered import mol_scores_gathered
from mol_core.similarity.gating_grouped import keep_mask, mol_scores_grouped

SIZES = [3, 0, 1, 6]  # an empty group and a single-row group


def small_mol(dropout: float = 0.0) -> MoLSimilarity:
    return MoLSimilarity(
        query_input_dim=12,
        item_input_dim=10,
        query_components=3,
        item_components=2,
        component_dim=8,
        gating_hidden_dim=16,
        gating_dropout=dropout,
        init="xavier",
    )


def per_group_reference(sim: Similarity, query: QuerySide, items: ItemSide, sizes: list[int]) -> torch.Tensor:
    """``score_pairs`` one group at a time."""
    parts, start = [], 0
    for group, size in enumerate(sizes):
        rows = slice(start, start + size)
        group_query = QuerySide(query.embeddings[rows], None if query.gating is None else query.gating[rows])
        group_items = ItemSide(items.embeddings[group], None if items.gating is None else items.gating[group])
        parts.append(sim.score_pairs(group_query, group_items))
        start += size
    return torch.cat(parts)


@pytest.mark.parametrize("kind", ["mol", "dot"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_score_groups_equals_score_pairs_per_group(kind: str, training: bool) -> None:
    torch.manual_seed(0)
    sim: Similarity = small_mol() if kind == "mol" else DotProductSimilarity(8)
    sim.train(training)
    query_dim, item_dim = (12, 10) if kind == "mol" else (8, 8)
    query = sim.query_side(torch.randn(sum(SIZES), query_dim))
    items = sim.item_side(torch.randn(len(SIZES), 5, item_dim))
    got = sim.score_groups(query, items, SIZES)
    assert got.shape == (sum(SIZES), 5)
    torch.testing.assert_close(got, per_group_reference(sim, query, items, SIZES))


def test_score_groups_refuses_sizes_that_do_not_match() -> None:
    sim = small_mol()
    query = sim.query_side(torch.randn(4, 12))
    items = sim.item_side(torch.randn(2, 5, 10))
    with pytest.raises(ShapeError, match="sum to M = 4"):
        sim.score_groups(query, items, [1, 2])
    with pytest.raises(ShapeError, match="one group per entry"):
        sim.score_groups(query, items, [4])


def test_keep_mask_keeps_the_requested_fraction() -> None:
    torch.manual_seed(1)
    mask = keep_mask((200, 300, 4), 0.2)
    assert mask.shape == (200, 300, 4)
    assert mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - 0.8) < 0.005  # 240,000 draws: std of the mean is 0.0008
    assert keep_mask((7, 3), 0.0).all()
    assert not keep_mask((7, 3), 1.0).any()
    torch.manual_seed(2)
    first = keep_mask((5, 9), 0.5)
    torch.manual_seed(2)
    assert torch.equal(first, keep_mask((5, 9), 0.5))  # reproducible under torch.manual_seed


def naive_scores(
    queries: torch.Tensor,
    query_gating: torch.Tensor,
    items: torch.Tensor,
    item_gating: torch.Tensor,
    sizes: list[int],
    mlp: list[torch.Tensor],
    keep: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The MoL training score written out: per row, logits against its group's items, the glu_silu gate,
    softmax, the dropout mask, renormalisation and the mixture."""
    group_of_row = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    row_items = items[group_of_row]  # (M, X, Px, d)
    logits = torch.einsum("mad,mxbd->mxab", queries, row_items).flatten(2) / temperature  # (M, X, P)
    hidden = F.silu(logits @ mlp[0].T + mlp[1])
    gate = F.silu(query_gating.unsqueeze(1) * item_gating[group_of_row] + hidden @ mlp[2].T + mlp[3])
    weights = torch.softmax(gate, dim=-1) * keep
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return (weights * logits).sum(dim=-1)


@pytest.mark.slow
def test_fused_kernel_equals_naive_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores and every gradient (component embeddings, gating features, MLP weights) against autograd
    through :func:`naive_scores` with the same dropout mask; blocks of 4 rows so a group spans blocks and
    its item gradients are summed over them; float32, then the bf16 MLP within bf16 rounding."""
    monkeypatch.setattr(gating_grouped, "BLOCK_PAIRS", 4 * 5)
    torch.manual_seed(3)
    num_q, num_i, dim, hidden, num_x = 3, 2, 8, 16, 5
    num_p, rows = num_q * num_i, sum(SIZES)
    queries = F.normalize(torch.randn(rows, num_q, dim), dim=-1).requires_grad_()
    query_gating = torch.randn(rows, num_p, requires_grad=True)
    items = F.normalize(torch.randn(len(SIZES), num_x, num_i, dim), dim=-1).requires_grad_()
    item_gating = torch.randn(len(SIZES), num_x, num_p, requires_grad=True)
    mlp = [
        (torch.randn(hidden, num_p) / 3).requires_grad_(),
        (torch.randn(hidden) / 3).requires_grad_(),
        (torch.randn(num_p, hidden) / 4).requires_grad_(),
        (torch.randn(num_p) / 3).requires_grad_(),
    ]
    inputs = [queries, query_gating, items, item_gating, *mlp]
    upstream = torch.randn(rows, num_x)

    def fused(mlp_dtype: torch.dtype | None) -> torch.Tensor:
        torch.manual_seed(4)
        return mol_scores_grouped(
            queries,
            query_gating,
            items,
            item_gating,
            SIZES,
            temperature=0.05,
            hidden_weight=mlp[0],
            hidden_bias=mlp[1],
            out_weight=mlp[2],
            out_bias=mlp[3],
            dropout=0.3,
            mlp_dtype=mlp_dtype,
        )

    torch.manual_seed(4)
    keep = keep_mask((rows, num_x, num_p), 0.3)
    assert not keep.all()
    want = naive_scores(queries, query_gating, items, item_gating, SIZES, mlp, keep, 0.05)
    want_grads = torch.autograd.grad((want * upstream).sum(), inputs)
    got = fused(None)
    got_grads = torch.autograd.grad((got * upstream).sum(), inputs)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad, atol=1e-3, rtol=1e-4)
    bf16 = fused(torch.bfloat16)
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, got)
    torch.testing.assert_close(bf16, want, atol=0.15, rtol=0.02)


@pytest.mark.slow
def test_mol_uses_the_fused_kernel_in_training_only() -> None:
    """With the ``"fused"`` kernel training scores equal the plain path's (no dropout); eval never uses it."""
    torch.manual_seed(5)
    sim = small_mol(dropout=0.0)
    query = sim.query_side(torch.randn(sum(SIZES), 12))
    items = sim.item_side(torch.randn(len(SIZES), 5, 10))
    plain = sim.score_groups(query, items, SIZES)
    sim.gating.set_scores_backend(kernel="fused")
    assert sim.gating.kernel == "fused"
    fused = sim.score_groups(query, items, SIZES)
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-5)
    params = [p for p in sim.parameters() if p.requires_grad]
    fused_grads = torch.autograd.grad(fused.sum(), params, retain_graph=True, allow_unused=True)
    plain_grads = torch.autograd.grad(plain.sum(), params, retain_graph=True, allow_unused=True)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)
    sim.eval()
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(gating_grouped, "mol_scores_grouped", None)  # any call would fail
        torch.testing.assert_close(sim.score_groups(query, items, SIZES), plain, atol=1e-5, rtol=1e-5)


ROWS, TABLE, NUM_X = 7, 6, 5


def repeated_index(generator: torch.Generator) -> torch.Tensor:
    """``(ROWS, NUM_X)`` rows of a ``TABLE``-row table, with repeats within and across rows."""
    index = torch.randint(0, TABLE, (ROWS, NUM_X), generator=generator)
    index[0, :2] = 3  # a candidate twice in one row
    index[1, 0] = 3  # and again in another row
    return index


@pytest.mark.parametrize("kind", ["mol", "dot"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_score_gathered_equals_score_pairs_of_the_gathered_rows(kind: str, training: bool) -> None:
    torch.manual_seed(0)
    sim: Similarity = small_mol() if kind == "mol" else DotProductSimilarity(8)
    sim.train(training)
    query_dim, item_dim = (12, 10) if kind == "mol" else (8, 8)
    query = sim.query_side(torch.randn(ROWS, query_dim))
    table = sim.item_side(torch.randn(TABLE, item_dim))
    index = repeated_index(torch.Generator().manual_seed(1))
    got = sim.score_gathered(query, table, index)
    gathered = ItemSide(table.embeddings[index], None if table.gating is None else table.gating[index])
    assert got.shape == (ROWS, NUM_X)
    torch.testing.assert_close(got, sim.score_pairs(query, gathered))


def test_score_gathered_refuses_an_index_of_the_wrong_shape() -> None:
    sim = small_mol()
    query = sim.query_side(torch.randn(4, 12))
    table = sim.item_side(torch.randn(TABLE, 10))
    with pytest.raises(ShapeError, match="index must have shape"):
        sim.score_gathered(query, table, torch.zeros(3, 2, dtype=torch.long))


def test_fused_gathered_kernel_refuses_an_index_outside_the_table() -> None:
    queries, gating = torch.randn(2, 3, 8), torch.randn(2, 6)
    table, table_gating = torch.randn(4, 2, 8), torch.randn(4, 6)
    mlp = dict(hidden_weight=torch.randn(5, 6), hidden_bias=torch.randn(5))
    mlp |= dict(out_weight=torch.randn(6, 5), out_bias=torch.randn(6))
    with pytest.raises(ShapeError, match=r"index must lie in \[0, U=4\)"):
        mol_scores_gathered(
            queries,
            gating,
            table,
            table_gating,
            torch.tensor([[0, 4], [1, 2]]),
            temperature=1.0,
            dropout=0.0,
            **mlp,
        )


@pytest.mark.slow
def test_fused_gathered_kernel_equals_naive_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores and every gradient (query and table components, gating features, MLP weights) against
    autograd through the gathered candidates with the same dropout mask; blocks of 2 rows, so repeated
    candidates collect gradient from several rows and blocks; float32, then the bf16 MLP."""
    monkeypatch.setattr(gating_gathered, "BLOCK_PAIRS", 2 * NUM_X)
    torch.manual_seed(3)
    num_q, num_i, dim, hidden = 3, 2, 8, 16
    num_p = num_q * num_i
    queries = F.normalize(torch.randn(ROWS, num_q, dim), dim=-1).requires_grad_()
    query_gating = torch.randn(ROWS, num_p, requires_grad=True)
    table = F.normalize(torch.randn(TABLE, num_i, dim), dim=-1).requires_grad_()
    table_gating = torch.randn(TABLE, num_p, requires_grad=True)
    mlp = [
        (torch.randn(hidden, num_p) / 3).requires_grad_(),
        (torch.randn(hidden) / 3).requires_grad_(),
        (torch.randn(num_p, hidden) / 4).requires_grad_(),
        (torch.randn(num_p) / 3).requires_grad_(),
    ]
    index = repeated_index(torch.Generator().manual_seed(2))
    inputs = [queries, query_gating, table, table_gating, *mlp]
    upstream = torch.randn(ROWS, NUM_X)

    def fused(mlp_dtype: torch.dtype | None) -> torch.Tensor:
        torch.manual_seed(4)
        return mol_scores_gathered(
            queries,
            query_gating,
            table,
            table_gating,
            index,
            temperature=0.05,
            hidden_weight=mlp[0],
            hidden_bias=mlp[1],
            out_weight=mlp[2],
            out_bias=mlp[3],
            dropout=0.3,
            mlp_dtype=mlp_dtype,
        )

    torch.manual_seed(4)
    keep = keep_mask((ROWS, NUM_X, num_p), 0.3)
    assert not keep.all()
    one_row_groups = [1] * ROWS
    want = naive_scores(
        queries, query_gating, table[index], table_gating[index], one_row_groups, mlp, keep, 0.05
    )
    want_grads = torch.autograd.grad((want * upstream).sum(), inputs)
    got = fused(None)
    got_grads = torch.autograd.grad((got * upstream).sum(), inputs)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad, atol=1e-3, rtol=1e-4)
    assert got_grads[2][3].abs().sum() > 0  # the repeated candidate got its gradient
    bf16 = fused(torch.bfloat16)
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, got)
    torch.testing.assert_close(bf16, want, atol=0.15, rtol=0.02)


@pytest.mark.slow
def test_mol_uses_the_fused_gathered_kernel_in_training_only() -> None:
    """With the ``"fused"`` kernel training scores and gradients equal the plain path's (no dropout)."""
    torch.manual_seed(5)
    sim = small_mol(dropout=0.0)
    query = sim.query_side(torch.randn(ROWS, 12))
    table = sim.item_side(torch.randn(TABLE, 10))
    index = repeated_index(torch.Generator().manual_seed(6))
    plain = sim.score_gathered(query, table, index)
    sim.gating.set_scores_backend(kernel="fused")
    fused = sim.score_gathered(query, table, index)
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-5)
    params = [p for p in sim.parameters() if p.requires_grad]
    fused_grads = torch.autograd.grad(fused.sum(), params, retain_graph=True, allow_unused=True)
    plain_grads = torch.autograd.grad(plain.sum(), params, retain_graph=True, allow_unused=True)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)
    sim.eval()
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(gating_gathered, "mol_scores_gathered", None)  # any call would fail
        torch.testing.assert_close(sim.score_gathered(query, table, index), plain, atol=1e-5, rtol=1e-5)
