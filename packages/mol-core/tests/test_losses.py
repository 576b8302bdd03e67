"""Losses against naive per-row implementations and hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from mol_core import ConfigError, ShapeError
from mol_core.losses import (
    in_batch_softmax_loss,
    mutual_information_loss,
    sample_uniform_negatives,
    sampled_softmax_loss,
)


def naive_sampled_softmax(
    pos: torch.Tensor, neg: torch.Tensor, pos_ids: torch.Tensor, neg_ids: torch.Tensor
) -> float:
    total = 0.0
    for m in range(pos.shape[0]):
        denominator = math.exp(float(pos[m]))
        for r in range(neg.shape[1]):
            if int(neg_ids[m, r]) != int(pos_ids[m]):
                denominator += math.exp(float(neg[m, r]))
        total += -float(pos[m]) + math.log(denominator)
    return total / pos.shape[0]


def test_sampled_softmax_matches_naive_and_masks_accidental_hits() -> None:
    torch.manual_seed(0)
    pos, neg = torch.randn(6), torch.randn(6, 5)
    pos_ids = torch.arange(6)
    neg_ids = torch.randint(0, 6, (6, 5))
    neg_ids[0, 0] = 0  # at least one accidental hit
    neg[0, 0] = 50.0  # which would dominate row 0 if it were not masked
    got = sampled_softmax_loss(pos, neg, positive_ids=pos_ids, negative_ids=neg_ids)
    assert got.item() == pytest.approx(naive_sampled_softmax(pos, neg, pos_ids, neg_ids), rel=1e-5)


def test_shared_negatives_equal_broadcast_negatives() -> None:
    torch.manual_seed(1)
    pos, neg = torch.randn(4), torch.randn(4, 3)
    pos_ids, shared = torch.tensor([1, 2, 3, 4]), torch.tensor([2, 9, 4])
    a = sampled_softmax_loss(pos, neg, positive_ids=pos_ids, negative_ids=shared)
    b = sampled_softmax_loss(pos, neg, positive_ids=pos_ids, negative_ids=shared.expand(4, 3))
    torch.testing.assert_close(a, b)
    per_row = sampled_softmax_loss(pos, neg, positive_ids=pos_ids, negative_ids=shared, reduction="none")
    assert per_row.shape == (4,)
    torch.testing.assert_close(per_row.mean(), a)


def test_in_batch_loss_matches_naive_with_logq_and_duplicates() -> None:
    torch.manual_seed(2)
    scores = torch.randn(5, 5)
    ids = torch.tensor([3, 7, 3, 1, 2])  # rows 0 and 2 share an item: each masks the other
    log_q = torch.log(torch.tensor([0.3, 0.1, 0.3, 0.2, 0.1]))
    got = in_batch_softmax_loss(scores, ids, log_q=log_q)
    total = 0.0
    for i in range(5):
        allowed = [j for j in range(5) if j == i or int(ids[j]) != int(ids[i])]
        logits = {j: float(scores[i, j] - log_q[j]) for j in allowed}
        total += -logits[i] + math.log(sum(math.exp(v) for v in logits.values()))
    assert got.item() == pytest.approx(total / 5, rel=1e-5)
    without = in_batch_softmax_loss(scores, ids)
    assert without.item() != pytest.approx(got.item())


def test_mi_loss_equals_hand_computation() -> None:
    weights = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    mean = [0.45, 0.55]
    marginal = -sum(p * math.log(p) for p in mean)
    pairs = (-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)) - (0.2 * math.log(0.2) + 0.8 * math.log(0.8))) / 2
    assert mutual_information_loss(weights).item() == pytest.approx(pairs - marginal, abs=1e-6)


def test_mi_loss_prefers_balanced_over_collapsed_gating() -> None:
    balanced = torch.eye(4)  # every component used, each pair decisive
    collapsed = torch.zeros(4, 4)
    collapsed[:, 0] = 1.0  # every pair on component 0
    uniform = torch.full((4, 4), 0.25)  # every pair undecided
    assert mutual_information_loss(balanced).item() == pytest.approx(-math.log(4), abs=1e-6)
    assert mutual_information_loss(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    assert mutual_information_loss(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert mutual_information_loss(balanced) < mutual_information_loss(collapsed)


def test_uniform_negatives_are_in_range_and_seeded() -> None:
    a = sample_uniform_negatives(100, 128, 10, low=1, generator=torch.Generator().manual_seed(3))
    b = sample_uniform_negatives(100, 128, 10, low=1, generator=torch.Generator().manual_seed(3))
    assert a.shape == (100, 128)
    assert a.dtype == torch.int64
    assert torch.equal(a, b)
    assert int(a.min()) == 1
    assert int(a.max()) == 10
    counts = torch.bincount(a.flatten(), minlength=11)[1:].float()
    assert float(counts.std() / counts.mean()) < 0.05  # roughly uniform over 12,800 draws


def test_loss_inputs_are_validated() -> None:
    with pytest.raises(ShapeError, match=r"\(3, R\)"):
        sampled_softmax_loss(
            torch.randn(3), torch.randn(4, 2), positive_ids=torch.arange(3), negative_ids=torch.arange(2)
        )
    with pytest.raises(ShapeError, match="negative_ids"):
        sampled_softmax_loss(
            torch.randn(3), torch.randn(3, 2), positive_ids=torch.arange(3), negative_ids=torch.arange(3)
        )
    with pytest.raises(ConfigError, match="reduction"):
        sampled_softmax_loss(
            torch.randn(3),
            torch.randn(3, 2),
            positive_ids=torch.arange(3),
            negative_ids=torch.arange(2),
            reduction="avg",
        )
    with pytest.raises(ShapeError, match="square"):
        in_batch_softmax_loss(torch.randn(3, 4), torch.arange(3))
    with pytest.raises(ShapeError, match=r"\(M, P\)"):
        mutual_information_loss(torch.randn(4))
    with pytest.raises(ConfigError, match="num_negatives"):
        sample_uniform_negatives(3, 0, 10)
