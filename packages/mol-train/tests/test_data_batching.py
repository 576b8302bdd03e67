"""Batches against a naive per-row reference, and their fit with mol_core.metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mol_core.errors import ConfigError
from mol_core.metrics import RankingMetrics, target_ranks
from mol_train.data import (
    eval_batch,
    iter_eval_batches,
    iter_train_batches,
    make_synthetic,
    train_batch,
    train_rows,
)


def _right_aligned(values: list[int], width: int) -> list[int]:
    values = values[-width:]
    return [0] * (width - len(values)) + values


@pytest.fixture(scope="module")
def dataset():  # type: ignore[no-untyped-def]
    return make_synthetic(num_users=40, num_items=30, num_clusters=3, min_length=3, max_len=9, seed=3)


def test_train_batch_matches_a_naive_reference(dataset) -> None:  # type: ignore[no-untyped-def]
    rows = train_rows(dataset)
    assert rows.tolist() == [r for r in range(dataset.num_users) if dataset.lengths[r] >= 4]
    for width in (dataset.max_len, 4):
        batch = train_batch(dataset, rows, max_len=width)
        assert batch.inputs.shape == (rows.size, width)
        assert batch.inputs.dtype == torch.int64
        for b, row in enumerate(rows.tolist()):
            seq = dataset.sequence(row).tolist()
            stamps = dataset.timestamps[dataset.offsets[row] : dataset.offsets[row + 1]].tolist()
            train = seq[:-2]
            assert batch.inputs[b].tolist() == _right_aligned(train[:-1], width)
            assert batch.targets[b].tolist() == _right_aligned(train[1:], width)
            assert batch.timestamps is not None
            assert batch.target_timestamps is not None
            assert batch.timestamps[b].tolist() == _right_aligned(stamps[:-2][:-1], width)
            assert batch.target_timestamps[b].tolist() == _right_aligned(stamps[:-2][1:], width)
            assert int(batch.lengths[b]) == min(len(train) - 1, width)
        assert torch.equal(batch.mask, batch.targets != 0)
        assert torch.equal(batch.mask.sum(1), batch.lengths)


@pytest.mark.parametrize("split", ["valid", "test"])
def test_eval_batch_matches_a_naive_reference(dataset, split: str) -> None:  # type: ignore[no-untyped-def]
    rows = np.arange(dataset.num_users)
    batch = eval_batch(dataset, rows, split, max_len=5)
    cut = 2 if split == "valid" else 1
    for b in rows.tolist():
        seq = dataset.sequence(b).tolist()
        stamps = dataset.timestamps[dataset.offsets[b] : dataset.offsets[b + 1]].tolist()
        assert int(batch.targets[b]) == seq[-cut]
        assert batch.history[b].tolist() == _right_aligned(seq[:-cut], 5)
        assert batch.timestamps is not None
        assert batch.target_timestamps is not None
        assert batch.timestamps[b].tolist() == _right_aligned(stamps[:-cut], 5)
        assert int(batch.target_timestamps[b]) == stamps[-cut]
        assert int(batch.lengths[b]) == min(len(seq) - cut, 5)
    assert torch.equal(batch.seen(), batch.history - 1)
    assert int(batch.seen().min()) == -1  # padding becomes the value mol_core ignores


def test_seen_and_target_columns_fit_mol_core_metrics(dataset) -> None:  # type: ignore[no-untyped-def]
    """Scores over ids 1..N (column j = id j + 1): history items scored above the target are filtered."""
    batch = eval_batch(dataset, np.arange(dataset.num_users), "test")
    with_padding = torch.zeros(len(batch.targets), dataset.num_items + 1)  # (B, N + 1), column = id
    with_padding.scatter_(1, batch.history, 2.0)  # every history item beats the target ...
    scores = with_padding[:, 1:].clone()  # (B, N): column j = id j + 1
    rows = torch.arange(len(batch.targets))
    scores[rows, batch.target_columns()] = 1.0  # ... the target beats every unseen item
    ranks = target_ranks(scores, batch.target_columns(), seen=batch.seen())
    assert ranks.tolist() == [1] * len(batch.targets)
    metrics = RankingMetrics(ks=(1,))
    metrics.update(scores, batch.target_columns(), seen=batch.seen())
    assert metrics.compute()["hr@1"] == 1.0
    assert bool((target_ranks(scores, batch.target_columns()) > 1).any())  # without the filter: worse


def test_iterators_partition_rows_across_processes(dataset) -> None:  # type: ignore[no-untyped-def]
    eligible = set(train_rows(dataset).tolist())
    seen: list[int] = []
    counts = []
    for rank in range(3):
        rows = [
            r
            for batch in iter_train_batches(dataset, 4, seed=1, epoch=2, rank=rank, world_size=3)
            for r in batch.user_rows.tolist()
        ]
        counts.append(len(rows))
        seen += rows
    assert len(set(counts)) == 1
    assert len(seen) == len(set(seen)) == len(eligible) // 3 * 3
    assert set(seen) <= eligible
    first = [b.user_rows.tolist() for b in iter_train_batches(dataset, 4, seed=1, epoch=2)]
    again = [b.user_rows.tolist() for b in iter_train_batches(dataset, 4, seed=1, epoch=2)]
    other = [b.user_rows.tolist() for b in iter_train_batches(dataset, 4, seed=1, epoch=3)]
    assert first == again != other
    assert all(len(b) == 4 for b in [b.user_rows for b in iter_train_batches(dataset, 4, drop_last=True)])
    evaluated = [
        r
        for rank in range(2)
        for b in iter_eval_batches(dataset, "valid", 7, rank=rank, world_size=2)
        for r in b.user_rows.tolist()
    ]
    assert sorted(evaluated) == list(range(dataset.num_users))


def test_bad_arguments(dataset) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="split must be one of"):
        eval_batch(dataset, [0], "train")
    with pytest.raises(ConfigError, match=r"rows must lie in \[0, U\)"):
        eval_batch(dataset, [dataset.num_users], "test")
    short = int(np.flatnonzero(dataset.lengths == 3)[0])
    with pytest.raises(ConfigError, match="fewer than 4 items"):
        train_batch(dataset, [short])
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        next(iter_train_batches(dataset, 0))
    with pytest.raises(ConfigError, match=r"rank must be an integer in \[0, world_size\)"):
        next(iter_eval_batches(dataset, "test", 4, rank=2, world_size=2))
