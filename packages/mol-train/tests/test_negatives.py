"""Sampled negatives: shapes, and the batched scoring against a naive loop over positions."""

from __future__ import annotations

import pytest
import torch

from mol_core import MoLSimilarity
from mol_core.errors import ShapeError
from mol_core.losses import sampled_softmax_loss
from mol_core.similarity import DotProductSimilarity, ItemSide, QuerySide, Similarity
from mol_train.config import NegativeSampling
from mol_train.negatives import lookup_ids, negative_ids_per_position, sample_negatives, score_negatives

B, L, N, R, D = 3, 5, 12, 4, 6


def _mask() -> torch.Tensor:
    lengths = torch.tensor([5, 2, 3])  # right-aligned valid positions per sequence
    return torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)  # (B, L)


def _similarities() -> list[Similarity]:
    torch.manual_seed(0)
    mol = MoLSimilarity(
        query_input_dim=D,
        item_input_dim=D,
        query_components=3,
        item_components=2,
        component_dim=4,
        gating_hidden_dim=8,
        query_layer_norm=True,
        query_hidden_dim=10,
        init="xavier",
    )
    return [mol.eval(), DotProductSimilarity(D, l2_normalize=True, temperature=0.1).eval()]


def _naive_scores(
    similarity: Similarity, query_repr: torch.Tensor, items: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """Position by position: the item side of that position's own negatives, scored one query at a time."""
    rows = []
    for m in range(query_repr.shape[0]):
        query = similarity.query_side(query_repr[m : m + 1])
        side = similarity.item_side(items[ids[m]])  # (R, Px, d)
        rows.append(similarity.score_pairs(query, side)[0])
    return torch.stack(rows)  # (M, R)


@pytest.mark.parametrize("sampling", list(NegativeSampling), ids=lambda s: s.value)
@pytest.mark.parametrize("which", [0, 1], ids=["mol", "dot"])
@torch.no_grad()
def test_batched_scoring_equals_a_loop_over_positions(sampling: NegativeSampling, which: int) -> None:
    similarity = _similarities()[which]
    mask = _mask()
    positions = int(mask.sum())
    items = torch.randn(N + 1, D)  # row = item id
    query_repr = torch.randn(positions, D)  # (M, D)
    gen = torch.Generator().manual_seed(1)
    negatives = sample_negatives(sampling, mask=mask, num_negatives=R, num_items=N, generator=gen)
    ids, inverse = lookup_ids(sampling, negatives)
    side = similarity.item_side(items[ids])  # (1 or B, U or R, Px, d)
    query = similarity.query_side(query_repr)
    scores = score_negatives(similarity, query, side, sampling, mask=mask, inverse=inverse)
    per_position = negative_ids_per_position(sampling, negatives, mask)
    full = per_position if per_position.dim() == 2 else per_position.expand(positions, R)
    torch.testing.assert_close(scores, _naive_scores(similarity, query_repr, items, full))


def test_sample_shapes_and_range() -> None:
    mask = _mask()
    gen = torch.Generator().manual_seed(0)
    shapes = {
        NegativeSampling.PER_POSITION: (int(mask.sum()), R),
        NegativeSampling.PER_SEQUENCE: (B, R),
        NegativeSampling.SHARED: (R,),
    }
    for sampling, shape in shapes.items():
        ids = sample_negatives(sampling, mask=mask, num_negatives=R, num_items=N, generator=gen)
        assert ids.shape == shape
        assert int(ids.min()) >= 1
        assert int(ids.max()) <= N


def test_ranks_get_the_rows_one_process_draws_for_them() -> None:
    """Global row j of a batch is on rank j mod W (iter_train_batches): per-sequence and shared negatives
    of W ranks with the same generator state are one process's draw for the whole batch, split so."""
    world = 3
    whole_mask = torch.ones(B * world, 4, dtype=torch.bool)
    whole_mask[torch.arange(B * world) % 4 == 1, :3] = False  # rows with 1 and with 4 positions
    counts = torch.stack([whole_mask[rank::world].sum(1) for rank in range(world)])  # (W, B)
    one = sample_negatives(
        NegativeSampling.PER_POSITION,
        mask=whole_mask,
        num_negatives=R,
        num_items=N,
        generator=torch.Generator().manual_seed(5),
    )  # (M, R) in global row order
    positions = torch.arange(B * world).repeat_interleave(whole_mask.sum(1))  # the global row of each
    for rank in range(world):
        mine = sample_negatives(
            NegativeSampling.PER_POSITION,
            mask=whole_mask[rank::world],
            num_negatives=R,
            num_items=N,
            generator=torch.Generator().manual_seed(5),
            rank=rank,
            world_size=world,
            counts_of_ranks=counts,
        )
        # this rank's rows, in its own order: global rows rank, rank + W, ... (each row's positions in order)
        want = torch.cat([one[positions == j] for j in range(rank, B * world, world)])
        assert torch.equal(mine, want)
    with pytest.raises(ShapeError, match="need counts_of_ranks of shape"):
        sample_negatives(
            NegativeSampling.PER_POSITION, mask=whole_mask[:B], num_negatives=R, num_items=N, world_size=3
        )
    for sampling in (NegativeSampling.PER_SEQUENCE, NegativeSampling.SHARED):
        seeded = torch.Generator().manual_seed(5)
        one = sample_negatives(sampling, mask=whole_mask, num_negatives=R, num_items=N, generator=seeded)
        for rank in range(world):
            mine = sample_negatives(
                sampling,
                mask=whole_mask[rank::world],
                num_negatives=R,
                num_items=N,
                generator=torch.Generator().manual_seed(5),
                rank=rank,
                world_size=world,
            )
            assert torch.equal(mine, one[rank::world] if sampling is NegativeSampling.PER_SEQUENCE else one)


def test_per_position_lookup_projects_each_distinct_item_once() -> None:
    negatives = torch.tensor([[3, 3, 7], [7, 1, 3]])
    ids, inverse = lookup_ids(NegativeSampling.PER_POSITION, negatives)
    assert ids.tolist() == [[1, 3, 7]]
    assert inverse is not None
    assert torch.equal(ids[0][inverse], negatives)


def test_per_sequence_ids_repeat_each_sequence_row_for_its_positions() -> None:
    mask = torch.tensor([[False, True, True], [True, True, True]])
    negatives = torch.tensor([[5, 6], [8, 9]])
    ids = negative_ids_per_position(NegativeSampling.PER_SEQUENCE, negatives, mask)
    assert ids.tolist() == [[5, 6], [5, 6], [8, 9], [8, 9], [8, 9]]


def test_accidental_hits_are_masked_per_position() -> None:
    """A per-position negative equal to that position's positive is left out; the same id at another
    position (whose positive differs) is kept."""
    positive_scores = torch.tensor([1.0, 1.0])
    negative_scores = torch.tensor([[2.0, 0.5], [2.0, 0.5]])
    negative_ids = torch.tensor([[4, 9], [4, 9]])
    loss = sampled_softmax_loss(
        positive_scores,
        negative_scores,
        positive_ids=torch.tensor([4, 5]),
        negative_ids=negative_ids,
        reduction="none",
    )
    want_first = -1.0 + torch.log(torch.exp(torch.tensor(1.0)) + torch.exp(torch.tensor(0.5)))
    want_second = -1.0 + torch.log(torch.exp(torch.tensor([1.0, 2.0, 0.5])).sum())
    torch.testing.assert_close(loss, torch.stack([want_first, want_second]))


def test_training_mode_scores_through_the_gating_dropout() -> None:
    """Per-sequence scoring in training mode still runs the similarity's own mixing (dropout included)."""
    similarity = _similarities()[0].train()
    mask = _mask()
    negatives = torch.randint(1, N + 1, (B, R))
    side = similarity.item_side(torch.randn(N + 1, D)[negatives])
    query = similarity.query_side(torch.randn(int(mask.sum()), D))
    torch.manual_seed(0)
    a = score_negatives(similarity, query, side, NegativeSampling.PER_SEQUENCE, mask=mask)
    torch.manual_seed(1)
    b = score_negatives(similarity, query, side, NegativeSampling.PER_SEQUENCE, mask=mask)
    assert not torch.allclose(a, b)
    assert isinstance(query, QuerySide)
    assert isinstance(side, ItemSide)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sampling", [NegativeSampling.PER_SEQUENCE, NegativeSampling.SHARED], ids=lambda s: s.value
)
def test_fused_kernel_in_training_equals_a_loop_over_positions(sampling: NegativeSampling) -> None:
    """MoL's ``"fused"`` training kernel (no gating dropout) scores like the naive loop in eval mode."""
    mol = _similarities()[0]
    assert isinstance(mol, MoLSimilarity)
    mol.gating.dropout = 0.0
    mask = _mask()
    positions = int(mask.sum())
    items = torch.randn(N + 1, D)
    query_repr = torch.randn(positions, D)
    negatives = sample_negatives(
        sampling, mask=mask, num_negatives=R, num_items=N, generator=torch.Generator().manual_seed(2)
    )
    ids, _ = lookup_ids(sampling, negatives)
    want = _naive_scores(
        mol, query_repr, items, negative_ids_per_position(sampling, negatives, mask).expand(positions, R)
    )
    mol.train().gating.set_scores_backend(kernel="fused")
    got = score_negatives(mol, mol.query_side(query_repr), mol.item_side(items[ids]), sampling, mask=mask)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
