"""Ranking metrics against a naive sort-each-row reference, hand-computed values and invariants."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mol_core.metrics
from mol_core import ConfigError, ShapeError
from mol_core.metrics import RankingMetrics, TargetRankAccumulator, target_ranks

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def seen_sets(seen: torch.Tensor | None, batch: int) -> list[set[int]]:
    """The seen items of each row as Python sets, from either accepted form."""
    if seen is None:
        return [set() for _ in range(batch)]
    if seen.dtype == torch.bool:
        return [{j for j, flag in enumerate(row) if flag} for row in seen.tolist()]
    return [{j for j in row if j >= 0} for row in seen.tolist()]


def naive_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None) -> list[int]:
    """Sorts each row's candidates by score, descending, with the target placed after its ties."""
    ranks = []
    for b, (row, excluded) in enumerate(
        zip(scores.float().tolist(), seen_sets(seen, len(targets)), strict=True)
    ):
        target = int(targets[b])
        candidates = [j for j in range(len(row)) if j == target or j not in excluded]
        candidates.sort(key=lambda j: (-row[j], j == target))
        ranks.append(candidates.index(target) + 1)
    return ranks


def naive_metrics(ranks: list[int], ks: tuple[int, ...]) -> dict[str, float]:
    n = len(ranks)
    out = {f"hr@{k}": sum(r <= k for r in ranks) / n for k in ks}
    out.update({f"ndcg@{k}": sum(1 / math.log2(r + 1) for r in ranks if r <= k) / n for k in ks})
    out["mrr"] = sum(1 / r for r in ranks) / n
    out["count"] = float(n)
    return out


@st.composite
def ranking_problems(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Small integer-valued scores (so ties are common) in any float dtype, with seen in either form."""
    batch = draw(st.integers(0, 5))
    num_items = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    spread = draw(st.sampled_from([0, 1, 3, 100]))
    scores = torch.randint(-spread, spread + 1, (batch, num_items), generator=gen).to(dtype)
    if draw(st.booleans()):
        scores[0:1, 0:1] = draw(st.sampled_from([float("inf"), float("-inf")]))
    targets = torch.randint(0, num_items, (batch,), generator=gen)
    form = draw(st.sampled_from(["none", "mask", "ids"]))
    seen: torch.Tensor | None = None
    if form == "mask":
        seen = torch.rand(batch, num_items, generator=gen) < 0.4
    elif form == "ids":
        length = draw(st.integers(0, 6))
        seen = torch.randint(-1, num_items, (batch, length), generator=gen)
    return scores, targets, seen


@settings(max_examples=80, deadline=None)
@given(problem=ranking_problems(), block=st.integers(1, 12), seed=st.integers(0, 1000))
def test_full_and_blockwise_ranks_match_naive(
    problem: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], block: int, seed: int
) -> None:
    scores, targets, seen = problem
    expected = naive_ranks(scores, targets, seen)
    ranks = target_ranks(scores, targets, seen=seen)
    assert ranks.dtype == torch.int64
    assert ranks.tolist() == expected

    num_items = scores.shape[1]
    acc = TargetRankAccumulator(
        scores.gather(1, targets.unsqueeze(1)).squeeze(1), targets, num_items=num_items, seen=seen
    )
    starts = list(range(0, num_items, block))
    order = torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed)).tolist()
    for i in order:  # blocks in any order
        acc.add_block(scores[:, starts[i] : starts[i] + block], starts[i])
    assert acc.ranks().tolist() == expected


def test_hand_computed_example() -> None:
    row = [0.9, 0.1, 0.5, 0.5, 0.2]
    scores = torch.tensor([row, row, [0.3] * 5, row])  # (B, N) = (4, 5)
    targets = torch.tensor([0, 2, 4, 1])
    seen = torch.tensor([[-1, -1], [-1, -1], [0, 1], [0, 1]])  # row 3's target is in its history
    ranks = target_ranks(scores, targets, seen=seen)
    # row 0: best; row 1: 0.9 beats it, the other 0.5 ties; row 2: items 2, 3 tie; row 3: 2, 3, 4 beat it
    assert ranks.tolist() == [1, 3, 3, 4]
    metrics = RankingMetrics(ks=(1, 3))
    metrics.update(scores, targets, seen=seen)
    assert metrics.compute() == pytest.approx(
        {"hr@1": 0.25, "hr@3": 0.75, "ndcg@1": 0.25, "ndcg@3": 0.5, "mrr": 23 / 48, "count": 4.0}
    )


def test_constant_scores_rank_last_not_first() -> None:
    scores = torch.zeros(3, 10)
    targets = torch.tensor([0, 5, 9])
    seen = torch.tensor([[-1, -1, -1], [1, 2, -1], [9, 3, -1]])  # row 2's own target does not count
    assert target_ranks(scores, targets).tolist() == [10, 10, 10]
    assert target_ranks(scores, targets, seen=seen).tolist() == [10, 8, 9]
    metrics = RankingMetrics(ks=(1, 5))
    metrics.update(scores, targets, seen=seen)
    result = metrics.compute()
    assert result["hr@1"] == 0.0
    assert result["hr@5"] == 0.0


def test_target_in_history_is_still_ranked() -> None:
    scores = torch.tensor([[0.2, 0.8, 0.4]])
    targets = torch.tensor([1])
    mask = torch.tensor([[False, True, False]])
    ids = torch.tensor([[1, -1]])
    assert target_ranks(scores, targets, seen=mask).tolist() == [1]
    assert target_ranks(scores, targets, seen=ids).tolist() == [1]


def test_bf16_compares_rounded_scores_with_pessimistic_ties() -> None:
    scores = torch.tensor([[1.0, 1.001]])  # equal once rounded to bf16
    targets = torch.tensor([1])
    assert target_ranks(scores, targets).tolist() == [1]
    assert target_ranks(scores.bfloat16(), targets).tolist() == [2]


def random_batches(count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(7, 300, generator=gen), torch.randint(0, 300, (7,), generator=gen)) for _ in range(count)
    ]


def test_accumulating_batches_equals_one_batch_and_naive_formula() -> None:
    ks = (1, 10, 50, 200)
    batches = random_batches(3, seed=0)
    split = RankingMetrics(ks)
    for scores, targets in batches:
        split.update(scores, targets)
    whole = RankingMetrics(ks)
    whole.update(torch.cat([s for s, _ in batches]), torch.cat([t for _, t in batches]))
    assert split.count == whole.count == 21
    assert split.compute() == pytest.approx(whole.compute())
    ranks = [r for s, t in batches for r in naive_ranks(s, t, None)]
    assert split.compute() == pytest.approx(naive_metrics(ranks, ks))


def test_merge_and_summed_state_tensors_equal_one_accumulator() -> None:
    ks = (1, 10)
    (s1, t1), (s2, t2) = random_batches(2, seed=1)
    a, b, both = RankingMetrics(ks), RankingMetrics(ks), RankingMetrics(ks)
    a.update(s1, t1)
    b.update(s2, t2)
    both.update(s1, t1)
    both.update(s2, t2)
    summed = RankingMetrics.from_state_tensor(a.state_tensor() + b.state_tensor(), ks)  # an all-reduce
    a.merge(b)
    assert a.compute() == pytest.approx(both.compute())
    assert summed.compute() == pytest.approx(both.compute())
    state = both.state_tensor()
    assert state.dtype == torch.float64
    assert state.shape == (2 * len(ks) + 2,)


def test_update_ranks_reset_and_empty_batches() -> None:
    metrics = RankingMetrics(ks=(1, 10))
    metrics.update_ranks(torch.tensor([], dtype=torch.int64))
    assert metrics.count == 0
    metrics.update_ranks(torch.tensor([1, 3, 20], dtype=torch.int32))
    assert metrics.compute() == pytest.approx(naive_metrics([1, 3, 20], (1, 10)))
    metrics.reset()
    assert metrics.count == 0
    with pytest.raises(RuntimeError, match="at least one ranked query"):
        metrics.compute()


def test_all_names_are_exported() -> None:
    for name in mol_core.metrics.__all__:
        assert hasattr(mol_core.metrics, name)
    assert set(mol_core.metrics.__all__) == {
        "RankingMetrics",
        "TargetRankAccumulator",
        "relevance_metrics",
        "target_ranks",
    }


SCORES = torch.zeros(2, 4)
TARGETS = torch.tensor([0, 3])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scores": torch.zeros(2, 4, 1)}, ShapeError, r"\(B, N\); got \(2, 4, 1\)"),
        ({"scores": torch.zeros(2, 4, dtype=torch.int64)}, ShapeError, "floating dtype"),
        ({"scores": torch.tensor([[0.0, float("nan"), 0.0, 0.0]] * 2)}, ValueError, "NaN"),
        ({"targets": torch.tensor([0, 1, 2])}, ShapeError, r"\(B,\) = \(2,\); got \(3\)"),
        ({"targets": torch.tensor([0.0, 1.0])}, ShapeError, "integer"),
        ({"targets": torch.tensor([0, 4])}, ValueError, r"\[0, 4\); got 4"),
        ({"targets": torch.tensor([-1, 0])}, ValueError, r"\[0, 4\); got -1"),
        ({"seen": torch.zeros(2, 3, dtype=torch.bool)}, ShapeError, r"\(B, N\) = \(2, 4\); got \(2, 3\)"),
        ({"seen": torch.zeros(3, 2, dtype=torch.int64)}, ShapeError, r"\(B, L\) = \(2, L\); got \(3, 2\)"),
        ({"seen": torch.zeros(2, 2)}, ShapeError, "dtype"),
        ({"seen": torch.tensor([[4, -1], [0, 1]])}, ValueError, "< N = 4.*got 4"),
    ],
)
def test_target_ranks_rejects_bad_input(
    kwargs: dict[str, torch.Tensor], error: type[Exception], match: str
) -> None:
    scores, targets = kwargs.get("scores", SCORES), kwargs.get("targets", TARGETS)
    with pytest.raises(error, match=match):
        target_ranks(scores, targets, seen=kwargs.get("seen"))


def test_accumulator_rejects_bad_blocks_and_missing_coverage() -> None:
    def fresh() -> TargetRankAccumulator:
        return TargetRankAccumulator(torch.zeros(2), TARGETS, num_items=4)

    with pytest.raises(ShapeError, match=r"\(B, n\) = \(2, n\); got \(3, 2\)"):
        fresh().add_block(torch.zeros(3, 2), 0)
    with pytest.raises(ValueError, match=r"block \[3, 5\) lies outside the N = 4"):
        fresh().add_block(torch.zeros(2, 2), 3)
    with pytest.raises(ValueError, match="NaN"):
        fresh().add_block(torch.full((2, 2), float("nan")), 0)
    acc = fresh()
    acc.add_block(torch.zeros(2, 2), 0)
    with pytest.raises(ValueError, match="overlaps"):
        acc.add_block(torch.zeros(2, 2), 1)
    with pytest.raises(RuntimeError, match="cover 2 of N = 4"):
        acc.ranks()
    with pytest.raises(ValueError, match="target_scores contain NaN"):
        TargetRankAccumulator(torch.tensor([0.0, float("nan")]), TARGETS, num_items=4)
    with pytest.raises(ShapeError, match=r"target_scores must have shape \(B,\)"):
        TargetRankAccumulator(torch.zeros(2, 1), TARGETS, num_items=4)
    with pytest.raises(ConfigError, match="num_items"):
        TargetRankAccumulator(torch.zeros(2), TARGETS, num_items=-1)


@pytest.mark.parametrize("ks", [(), (0, 1), (10, 1), (1, 1), (1.5,), (True,)])
def test_ranking_metrics_rejects_bad_ks(ks: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match=r"\bks\b"):
        RankingMetrics(ks)


def test_ranking_metrics_rejects_bad_ranks_and_states() -> None:
    metrics = RankingMetrics(ks=(1, 10))
    with pytest.raises(ValueError, match="1-based; got 0"):
        metrics.update_ranks(torch.tensor([1, 0]))
    with pytest.raises(ShapeError, match="integer"):
        metrics.update_ranks(torch.tensor([1.0, 2.0]))
    with pytest.raises(ShapeError, match=r"\(B,\)"):
        metrics.update_ranks(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ConfigError, match="cannot merge"):
        metrics.merge(RankingMetrics(ks=(1, 5)))
    with pytest.raises(ShapeError, match=r"\(2K \+ 2,\) = \(6,\) for ks=\(1, 10\); got \(5\)"):
        RankingMetrics.from_state_tensor(torch.zeros(5, dtype=torch.float64), (1, 10))
    with pytest.raises(ValueError, match="count"):
        RankingMetrics.from_state_tensor(torch.tensor([0.0] * 5 + [1.5], dtype=torch.float64), (1, 10))
