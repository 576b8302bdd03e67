"""A synthetic data set with planted sequential structure, for tests and the quickstart.

The N items are split into C clusters of (nearly) equal size, with Zipf-like popularity inside each
cluster. Each user follows one of M interest modes; a mode is a fixed random successor map over clusters.
After an item of cluster c the next item's cluster is ``successor[mode][c]`` with probability
``coherence``, else a uniformly random cluster; the item is then drawn by popularity within the cluster.
A model that reads the history (which cluster came last, which mode the user is in) therefore beats a
popularity ranking by a wide margin; the tests check that a simple transition-count model does.
"""

from __future__ import annotations

import numpy as np

from mol_core.errors import ConfigError
from mol_train.data.dataset import MIN_SEQUENCE_LENGTH, SequenceDataset

__all__ = ["make_synthetic", "synthetic_clusters"]


def synthetic_clusters(num_items: int, num_clusters: int) -> np.ndarray:
    """``(N,)`` int64 cluster of each internal item id 1..N (entry j is item j + 1), as in make_synthetic."""
    return (np.arange(num_items, dtype=np.int64) * num_clusters) // num_items


def make_synthetic(
    *,
    num_users: int = 1000,
    num_items: int = 500,
    num_clusters: int = 20,
    num_modes: int = 4,
    coherence: float = 0.8,
    min_length: int = 10,
    max_len: int = 50,
    with_timestamps: bool = True,
    seed: int = 0,
) -> SequenceDataset:
    """Generates a :class:`SequenceDataset` with planted Markov structure over item clusters.

    Deterministic: the same arguments give the same arrays. External item ids are 1..N (equal to the
    internal ids) and external user ids 1..U. Sequence lengths are uniform in
    ``[min_length, max_len + 1]``; timestamps (when asked for) increase within each user.

    Args:
        num_users: U.
        num_items: N, at least ``num_clusters``.
        num_clusters: C.
        num_modes: M, the number of interest modes (successor maps).
        coherence: probability of following the mode's successor cluster, in [0, 1].
        min_length: the shortest sequence (>= 3).
        max_len: L, stored as the data set's ``max_len``; the longest sequence is L + 1.
        with_timestamps: also generate timestamps.
        seed: the random seed.

    Returns:
        the data set, ready for :func:`~mol_train.fit` (or ``save``).

    Raises:
        ConfigError: an argument is out of range.

    Example::

        dataset = make_synthetic(num_users=300, num_items=200, seed=1)
        dataset.num_users, dataset.num_items  # (300, 200)
    """
    for label, value, low in (
        ("num_users", num_users, 1),
        ("num_clusters", num_clusters, 1),
        ("num_items", num_items, num_clusters),
        ("num_modes", num_modes, 1),
        ("min_length", min_length, MIN_SEQUENCE_LENGTH),
        ("max_len", max_len, max(2, min_length - 1)),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{label} must be an integer >= {low}; got {value!r}")
    if not 0.0 <= float(coherence) <= 1.0:
        raise ConfigError(f"coherence must lie in [0, 1]; got {coherence!r}")
    rng = np.random.default_rng(seed)
    clusters = synthetic_clusters(num_items, num_clusters)  # (N,)
    members = [np.flatnonzero(clusters == c) for c in range(num_clusters)]
    weights = [1.0 / np.arange(1, part.size + 1) ** 0.8 for part in members]
    probs = [w / w.sum() for w in weights]
    successors = np.stack([rng.permutation(num_clusters) for _ in range(num_modes)])  # (M, C)
    modes = rng.integers(num_modes, size=num_users)  # (U,)
    lengths = rng.integers(min_length, max_len + 2, size=num_users)  # (U,)
    longest = int(lengths.max())
    cluster_seq = np.empty((num_users, longest), dtype=np.int64)  # (U, S)
    cluster_seq[:, 0] = rng.integers(num_clusters, size=num_users)
    for step in range(1, longest):
        follow = rng.random(num_users) < coherence  # (U,)
        planted = successors[modes, cluster_seq[:, step - 1]]  # (U,)
        cluster_seq[:, step] = np.where(follow, planted, rng.integers(num_clusters, size=num_users))
    item_seq = np.empty_like(cluster_seq)  # (U, S) internal ids
    for c in range(num_clusters):
        where = cluster_seq == c
        item_seq[where] = rng.choice(members[c], size=int(where.sum()), p=probs[c]) + 1
    valid = np.arange(longest)[None, :] < lengths[:, None]  # (U, S)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (U + 1,)
    timestamps = None
    if with_timestamps:
        gaps = rng.integers(1, 86_400, size=(num_users, longest))  # (U, S)
        starts = rng.integers(1_000_000_000, 1_100_000_000, size=(num_users, 1))  # (U, 1)
        timestamps = (starts + np.cumsum(gaps, axis=1))[valid].astype(np.int64)
    return SequenceDataset(
        items=item_seq[valid].astype(np.int64),
        offsets=offsets,
        timestamps=timestamps,
        user_ids=np.arange(1, num_users + 1, dtype=np.int64),
        item_vocab=np.arange(1, num_items + 1, dtype=np.int64),
        max_len=max_len,
        name=f"synthetic(seed={seed})",
    )
