"""The synthetic generator: deterministic, valid, and with structure a sequential model can exploit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mol_core.errors import ConfigError
from mol_core.metrics import RankingMetrics
from mol_train.data import eval_batch, make_synthetic, synthetic_clusters


def test_deterministic_under_a_seed() -> None:
    a = make_synthetic(num_users=50, seed=7)
    b = make_synthetic(num_users=50, seed=7)
    c = make_synthetic(num_users=50, seed=8)
    assert np.array_equal(a.items, b.items)
    assert a.timestamps is not None
    assert b.timestamps is not None
    assert np.array_equal(a.timestamps, b.timestamps)
    assert not np.array_equal(a.items[: c.items.size], c.items[: a.items.size])


def test_shape_of_the_data() -> None:
    data = make_synthetic(num_users=200, num_items=60, num_clusters=6, min_length=5, max_len=12)
    assert data.num_users == 200
    assert data.num_items == 60
    assert int(data.lengths.min()) >= 5
    assert int(data.lengths.max()) <= 13
    assert data.timestamps is not None
    for row in range(data.num_users):
        stamps = data.timestamps[data.offsets[row] : data.offsets[row + 1]]
        assert bool((np.diff(stamps) > 0).all())
    assert make_synthetic(num_users=5, with_timestamps=False).timestamps is None
    with pytest.raises(ConfigError, match="num_items must be an integer >= 6"):
        make_synthetic(num_items=3, num_clusters=6)
    with pytest.raises(ConfigError, match="coherence must lie in"):
        make_synthetic(coherence=1.5)


def test_a_transition_model_beats_popularity() -> None:
    """Cluster-transition counts from the training parts rank the test item far better than popularity."""
    data = make_synthetic(num_users=800, num_items=200, num_clusters=10, num_modes=3, seed=1)
    clusters = torch.from_numpy(synthetic_clusters(data.num_items, 10))  # (N,)
    popularity = torch.zeros(data.num_items)  # (N,) over ids 1..N
    transitions = torch.ones(10, 10)  # (C, C), add-one smoothing
    for row in range(data.num_users):
        train = torch.from_numpy(data.sequence(row)[:-2]) - 1
        popularity.index_add_(0, train, torch.ones(train.numel()))
        transitions.index_put_(
            (clusters[train[:-1]], clusters[train[1:]]), torch.ones(train.numel() - 1), True
        )
    batch = eval_batch(data, np.arange(data.num_users), "test")
    last = clusters[batch.history[:, -1] - 1]  # (B,)
    within = popularity / torch.zeros(10).index_add_(0, clusters, popularity)[clusters]  # P(item | cluster)
    markov = (transitions[last] / transitions[last].sum(1, keepdim=True))[:, clusters] * within  # (B, N)
    results = {}
    for name, scores in (("pop", popularity.expand(len(last), -1)), ("markov", markov)):
        metrics = RankingMetrics(ks=(10,))
        metrics.update(scores.contiguous(), batch.target_columns(), seen=batch.seen())
        results[name] = metrics.compute()["hr@10"]
    assert results["markov"] > 1.5 * results["pop"], results
