"""Preprocessing: raw interactions -> per-user chronological sequences -> a prepared directory.

A prepared directory holds ``dataset.npz`` (:class:`SequenceDataset`, item vocabulary included) and
``info.json`` (counts, format, source, max_len: for people, not read back).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mol_core.atomic import replace_directory
from mol_core.errors import ConfigError
from mol_train.data.dataset import DATASET_FILE, FORMAT_VERSION, MIN_SEQUENCE_LENGTH, SequenceDataset
from mol_train.data.errors import DataError
from mol_train.data.loaders import FORMATS, Interactions, load_interactions

__all__ = ["DEFAULT_MAX_LEN", "INFO_FILE", "build_sequences", "prepare"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_LEN: dict[str, int] = {
    "movielens-dat": 200,
    "movielens-csv": 200,
    "movielens-100k": 200,
    "amazon-csv": 50,
    "user-item": 200,
}
"""The paper's history cap per format: 200 for MovieLens, 50 for Amazon Books."""

INFO_FILE = "info.json"


def build_sequences(
    interactions: Interactions, *, max_len: int, min_interactions: int = MIN_SEQUENCE_LENGTH, name: str = ""
) -> SequenceDataset:
    """Groups interactions into per-user chronological sequences.

    Within a user, interactions are stably sorted by timestamp when there are timestamps (ties keep file
    order), else kept in file order. Each sequence keeps its most recent ``max_len + 1`` items, so the test
    target's history fills a model window of ``max_len``. Users with fewer than ``min_interactions``
    (at least 3) interactions are dropped. The item vocabulary is every item of ``interactions``, also
    items that only dropped users or truncated parts had (ranking is over the full corpus).

    Args:
        interactions: the raw interactions.
        max_len: L, the longest history a model reads (>= 2).
        min_interactions: users with fewer interactions are dropped (>= 3).
        name: a label stored with the data set.

    Returns:
        The data set; users in the order of their sorted external ids.

    Raises:
        ConfigError: ``max_len`` < 2 or ``min_interactions`` < 3.
        DataError: no user is left (the message says how many interactions and users there were).
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise ConfigError(f"max_len must be an integer >= 2; got {max_len!r}")
    if isinstance(min_interactions, bool) or not isinstance(min_interactions, int):
        raise ConfigError(f"min_interactions must be an integer >= 3; got {min_interactions!r}")
    if min_interactions < MIN_SEQUENCE_LENGTH:
        raise ConfigError(
            f"min_interactions must be >= {MIN_SEQUENCE_LENGTH} (a training item, a validation target and a "
            f"test target); got {min_interactions}"
        )
    if interactions.timestamps is not None:
        order = np.argsort(interactions.timestamps, kind="stable")  # (M,)
        order = order[np.argsort(interactions.user_codes[order], kind="stable")]  # (M,)
    else:
        order = np.argsort(interactions.user_codes, kind="stable")  # (M,)
    users = interactions.user_codes[order]  # (M,) sorted
    counts = np.bincount(users, minlength=interactions.num_users)  # (U,)
    starts = np.concatenate([[0], np.cumsum(counts)])  # (U + 1,)
    kept_users = np.flatnonzero(counts >= min_interactions)  # (U',)
    if kept_users.size == 0:
        raise DataError(
            f"no user has at least {min_interactions} interactions in "
            f"{name or interactions.source or 'the data'} "
            f"({len(interactions)} interactions, {interactions.num_users} users); leave-one-out needs "
            "a training item, a validation target and a test target per user"
        )
    keep_count = np.minimum(counts[kept_users], max_len + 1)  # (U',)
    ends = starts[kept_users + 1]  # (U',)
    offsets = np.concatenate([[0], np.cumsum(keep_count)]).astype(np.int64)  # (U' + 1,)
    # Position t of the output takes the input at ends[u] - keep_count[u] + (t - offsets[u]).
    row_of = np.repeat(np.arange(kept_users.size), keep_count)  # (T,)
    source = order[ends[row_of] - keep_count[row_of] + (np.arange(offsets[-1]) - offsets[row_of])]  # (T,)
    dropped = interactions.num_users - kept_users.size
    if dropped:
        logger.info("dropped %d users with fewer than %d interactions", dropped, min_interactions)
    return SequenceDataset(
        items=interactions.item_codes[source] + 1,
        offsets=offsets,
        timestamps=None if interactions.timestamps is None else interactions.timestamps[source],
        user_ids=interactions.user_ids[kept_users],
        item_vocab=interactions.item_ids,
        max_len=max_len,
        name=name or interactions.source,
    )


def prepare(
    source: str | os.PathLike[str],
    fmt: str,
    out_dir: str | os.PathLike[str],
    *,
    max_len: int | None = None,
    min_interactions: int = MIN_SEQUENCE_LENGTH,
    core: int | None = None,
    overwrite: bool = False,
) -> SequenceDataset:
    """Reads a raw file, builds the sequences and writes a prepared directory atomically.

    Args:
        source: the raw file (see :data:`~mol_train.data.FORMATS`).
        fmt: its format name.
        out_dir: the directory to create (``dataset.npz`` + ``info.json``).
        max_len: L; default :data:`DEFAULT_MAX_LEN` of the format (200 MovieLens, 50 Amazon).
        min_interactions: users with fewer interactions are dropped (>= 3).
        core: k-core filter (default 5 for ``amazon-csv``, none otherwise).
        overwrite: replace an existing ``out_dir``; otherwise an existing one is an error.

    Returns:
        The prepared data set (as saved).

    Raises:
        ConfigError: an unknown format, a bad ``max_len``, or ``out_dir`` exists without ``overwrite``.
        DataFormatError: a malformed line in ``source``.
        DataError: the data set is empty or too small.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    target = Path(out_dir)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    length = DEFAULT_MAX_LEN[fmt] if max_len is None else max_len
    interactions = load_interactions(source, fmt, core=core)
    if len(interactions) == 0:
        raise DataError(
            f"{os.fspath(source)} holds no interactions (format {fmt}); check the file and format"
        )
    dataset = build_sequences(
        interactions, max_len=length, min_interactions=min_interactions, name=Path(source).name
    )
    info = {
        "format_version": FORMAT_VERSION,
        "source": Path(source).name,
        "format": fmt,
        "max_len": length,
        "min_interactions": min_interactions,
        "core": core if core is not None else (5 if fmt == "amazon-csv" else 0),
        "raw_interactions": len(interactions),
        "raw_users": interactions.num_users,
        "users": dataset.num_users,
        "items": dataset.num_items,
        "stored_interactions": dataset.num_interactions,
        "has_timestamps": dataset.timestamps is not None,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        dataset.save(staging / DATASET_FILE)
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("prepared %s: %s", target, info)
    return dataset
