"""Padded batches for training and leave-one-out evaluation.

Conventions (shared with the training loop and :mod:`mol_core.metrics`):
    * Sequences are **right-aligned**: the last position L-1 holds the most recent item; padding (item
      id 0, timestamp 0) fills the left. ``lengths`` counts the real positions.
    * Item ids are internal ids 1..N. Score matrices are ``(B, N)`` over internal ids 1..N with **column
      j = internal id j + 1** (no padding column). Hence :meth:`EvalBatch.target_columns` is
      ``targets - 1`` and :meth:`EvalBatch.seen` is ``history - 1``, where padding becomes -1, the value
      ``mol_core.metrics`` ignores::

          metrics.update(scores, batch.target_columns(), seen=batch.seen())  # scores: (B, N)

    * Training (a row with n items ``s``; its training part is ``s[:n-2]``): ``inputs`` are the training
      part without its last item and ``targets`` the training part without its first item, so position
      i's target is the item after position i's input. Rows with fewer than 4 items have no training pair.
    * Evaluation: ``valid`` targets ``s[n-2]`` with history ``s[:n-2]``; ``test`` targets ``s[n-1]`` with
      history ``s[:n-1]``. Histories longer than L keep their most recent L items; ``seen`` is that
      (truncated) history, the items the model reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mol_core.errors import ConfigError
from mol_train.data.dataset import SequenceDataset

__all__ = [
    "EVAL_SPLITS",
    "EvalBatch",
    "TrainBatch",
    "eval_batch",
    "iter_eval_batches",
    "iter_train_batches",
    "train_batch",
    "train_rows",
]

EVAL_SPLITS = ("valid", "test")


@dataclass(frozen=True)
class TrainBatch:
    """B training sequences, right-aligned in L positions.

    Attributes:
        user_rows: ``(B,)`` int64 dataset row of each sequence (for user-id embeddings).
        inputs: ``(B, L)`` int64 input item ids, 0 = padding.
        targets: ``(B, L)`` int64 next item at each position, 0 = padding (exactly where inputs are 0).
        timestamps: ``(B, L)`` int64 timestamps of the inputs (0 = padding), or ``None``.
        target_timestamps: ``(B, L)`` int64 timestamps of the targets, or ``None``.
        lengths: ``(B,)`` int64 number of real positions.
    """

    user_rows: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    timestamps: torch.Tensor | None
    target_timestamps: torch.Tensor | None
    lengths: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """``(B, L)`` bool, True at real positions."""
        return self.inputs != 0


@dataclass(frozen=True)
class EvalBatch:
    """B leave-one-out queries: a right-aligned history and the held-out target.

    Attributes:
        user_rows: ``(B,)`` int64 dataset rows.
        history: ``(B, L)`` int64 item ids before the target, 0 = padding.
        timestamps: ``(B, L)`` int64 timestamps of the history, or ``None``.
        lengths: ``(B,)`` int64 history lengths.
        targets: ``(B,)`` int64 internal id of each target item.
        target_timestamps: ``(B,)`` int64 timestamp of each target, or ``None``.
    """

    user_rows: torch.Tensor
    history: torch.Tensor
    timestamps: torch.Tensor | None
    lengths: torch.Tensor
    targets: torch.Tensor
    target_timestamps: torch.Tensor | None

    def target_columns(self) -> torch.Tensor:
        """``(B,)`` target column in a ``(B, N)`` score matrix over ids 1..N (``targets - 1``)."""
        return self.targets - 1

    def seen(self) -> torch.Tensor:
        """``(B, L)`` history columns for ``mol_core.metrics`` (``history - 1``; padding is -1)."""
        return self.history - 1


def train_rows(dataset: SequenceDataset) -> np.ndarray:
    """``(R,)`` int64 rows that have at least one training pair (4 or more items)."""
    return np.flatnonzero(dataset.lengths >= 4).astype(np.int64)


def train_batch(
    dataset: SequenceDataset, rows: Sequence[int] | np.ndarray, *, max_len: int | None = None
) -> TrainBatch:
    """Builds the training batch of the given rows.

    Args:
        dataset: the data set.
        rows: B dataset rows, each with at least 4 items (see :func:`train_rows`).
        max_len: L, the padded width; default ``dataset.max_len``. Longer inputs keep their last L items.

    Raises:
        ConfigError: a row is out of range or has no training pair, or ``max_len`` < 1.
    """
    width = _width(dataset, max_len)
    row_array = _rows(dataset, rows, min_items=4)
    inputs, targets, stamps, target_stamps = [], [], [], []
    for row in row_array.tolist():
        start, stop = int(dataset.offsets[row]), int(dataset.offsets[row + 1]) - 2  # training part
        first = max(start, stop - 1 - width)
        inputs.append(dataset.items[first : stop - 1])
        targets.append(dataset.items[first + 1 : stop])
        if dataset.timestamps is not None:
            stamps.append(dataset.timestamps[first : stop - 1])
            target_stamps.append(dataset.timestamps[first + 1 : stop])
    has_time = dataset.timestamps is not None
    return TrainBatch(
        user_rows=torch.from_numpy(row_array.copy()),
        inputs=_pad(inputs, width),
        targets=_pad(targets, width),
        timestamps=_pad(stamps, width) if has_time else None,
        target_timestamps=_pad(target_stamps, width) if has_time else None,
        lengths=torch.tensor([piece.size for piece in inputs], dtype=torch.int64),
    )


def eval_batch(
    dataset: SequenceDataset, rows: Sequence[int] | np.ndarray, split: str, *, max_len: int | None = None
) -> EvalBatch:
    """Builds the validation or test queries of the given rows.

    Args:
        dataset: the data set.
        rows: B dataset rows.
        split: ``"valid"`` (target = second-to-last item) or ``"test"`` (target = last item).
        max_len: L, the padded width; default ``dataset.max_len``. Longer histories keep their last L items.

    Raises:
        ConfigError: an unknown split, a row out of range, or ``max_len`` < 1.
    """
    if split not in EVAL_SPLITS:
        raise ConfigError(f"split must be one of {EVAL_SPLITS}; got {split!r}")
    width = _width(dataset, max_len)
    row_array = _rows(dataset, rows, min_items=3)
    back = 2 if split == "valid" else 1
    target_pos = dataset.offsets[row_array + 1] - back  # (B,)
    history, stamps = [], []
    for row, target in zip(row_array.tolist(), target_pos.tolist(), strict=True):
        first = max(int(dataset.offsets[row]), target - width)
        history.append(dataset.items[first:target])
        if dataset.timestamps is not None:
            stamps.append(dataset.timestamps[first:target])
    has_time = dataset.timestamps is not None
    return EvalBatch(
        user_rows=torch.from_numpy(row_array.copy()),
        history=_pad(history, width),
        timestamps=_pad(stamps, width) if has_time else None,
        lengths=torch.tensor([piece.size for piece in history], dtype=torch.int64),
        targets=torch.from_numpy(dataset.items[target_pos].copy()),
        target_timestamps=(
            torch.from_numpy(dataset.timestamps[target_pos].copy())
            if dataset.timestamps is not None
            else None
        ),
    )


def iter_train_batches(
    dataset: SequenceDataset,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    max_len: int | None = None,
) -> Iterator[TrainBatch]:
    """Yields the training batches of one epoch.

    The rows of :func:`train_rows` are permuted by a generator seeded with ``(seed, epoch)`` (the same
    permutation in every process), then process ``rank`` of ``world_size`` takes every ``world_size``-th
    row, the tail cut so that every process gets the same number of rows (and batches).

    Args:
        dataset: the data set.
        batch_size: B, rows per batch (per process).
        seed: the shuffling seed.
        epoch: the epoch number, mixed into the seed.
        shuffle: permute the rows (else dataset order).
        drop_last: drop a last batch smaller than ``batch_size``.
        rank: this process's rank in ``[0, world_size)``.
        world_size: the number of processes.
        max_len: L, default ``dataset.max_len``.

    Raises:
        ConfigError: a bad batch size, rank or world size.
    """
    _check_batching(batch_size, rank, world_size)
    rows = train_rows(dataset)
    if shuffle:
        rows = rows[np.random.default_rng([seed, epoch]).permutation(rows.size)]
    per_rank = rows.size // world_size
    rows = rows[rank::world_size][:per_rank]
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        if drop_last and chunk.size < batch_size:
            break
        yield train_batch(dataset, chunk, max_len=max_len)


def iter_eval_batches(
    dataset: SequenceDataset,
    split: str,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    max_len: int | None = None,
) -> Iterator[EvalBatch]:
    """Yields the validation or test queries of every user, in row order.

    Process ``rank`` takes rows ``rank, rank + world_size, ...`` (every user exactly once over all
    processes; counts may differ by one, so all-reduce metric sums, not per-batch values).

    Raises:
        ConfigError: an unknown split, or a bad batch size, rank or world size.
    """
    _check_batching(batch_size, rank, world_size)
    rows = np.arange(rank, dataset.num_users, world_size, dtype=np.int64)
    for start in range(0, rows.size, batch_size):
        yield eval_batch(dataset, rows[start : start + batch_size], split, max_len=max_len)


def _pad(pieces: list[np.ndarray], width: int) -> torch.Tensor:
    """Right-aligns 1-d int64 pieces in a ``(B, width)`` zero-padded tensor."""
    out = np.zeros((len(pieces), width), dtype=np.int64)  # (B, L)
    for index, piece in enumerate(pieces):
        if piece.size:
            out[index, width - piece.size :] = piece
    return torch.from_numpy(out)


def _width(dataset: SequenceDataset, max_len: int | None) -> int:
    width = dataset.max_len if max_len is None else max_len
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"max_len must be a positive integer; got {width!r}")
    return width


def _rows(dataset: SequenceDataset, rows: Sequence[int] | np.ndarray, *, min_items: int) -> np.ndarray:
    row_array = np.asarray(rows, dtype=np.int64).reshape(-1)  # (B,)
    if row_array.size and (int(row_array.min()) < 0 or int(row_array.max()) >= dataset.num_users):
        raise ConfigError(f"rows must lie in [0, U) = [0, {dataset.num_users}); got {row_array.tolist()[:8]}")
    short = row_array[dataset.lengths[row_array] < min_items]
    if short.size:
        raise ConfigError(f"rows {short.tolist()[:8]} have fewer than {min_items} items")
    return row_array


def _check_batching(batch_size: int, rank: int, world_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be a positive integer; got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be an integer in [0, world_size) = [0, {world_size}); got {rank!r}")
