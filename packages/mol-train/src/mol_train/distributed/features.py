"""KeyedJaggedTensor inputs of the embedding tables, built from padded id tensors.

A training batch arrives as dense tensors: ``(B, L)`` item histories, right-aligned with padding id 0 on
the left, ``(M, R)`` candidate ids (sampled negatives or positives) and ``(B,)`` user ids. torchrec's
embedding modules take a :class:`~torchrec.KeyedJaggedTensor` (KJT) instead: per feature key, a flat
``values`` tensor of ids and one ``length`` per row. The two classes here build that KJT with named
constructors and keep what is needed to put the looked-up embeddings back into dense shapes.

Item KJT layout (one key, ``"item"``, so one table lookup and one fused-optimizer update per step):

    rows 0 .. B-1          the non-padding ids of each history, in order (length = its count of ids != 0)
    rows B .. B+M-1        the R ids of each candidate row (length R)

Padding ids never reach the table, so padding positions come back as exact zeros and the padding row
(row 0) is never read or updated. An :class:`~torchrec.EmbeddingCollection` does not pool, so the row
layout only serves to unpack the output.

User KJT layout (key ``"user"``): one id per row, the raw user id hashed into ``num_buckets`` buckets by
``user_id % num_buckets`` (modulo: deterministic across processes and runs, no seed to store).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec import KeyedJaggedTensor

from mol_core._checks import check_positive_int, shape_str
from mol_core.errors import ShapeError

__all__ = ["ITEM_FEATURE", "USER_FEATURE", "ItemFeatures", "UserFeatures", "hash_user_ids"]

#: Feature key of the item table's KJT.
ITEM_FEATURE = "item"
#: Feature key of the user table's KJT.
USER_FEATURE = "user"


def _check_ids(name: str, ids: torch.Tensor, rank: int, shape: str) -> None:
    if ids.dim() != rank:
        raise ShapeError(f"{name} must have shape {shape}; got {shape_str(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ShapeError(f"{name} must hold integer ids; got dtype {ids.dtype}")


def _check_item_range(name: str, ids: torch.Tensor, num_items: int | None, *, low: int) -> None:
    if num_items is None or ids.numel() == 0:
        return
    smallest, largest = int(ids.min()), int(ids.max())
    if smallest < low or largest > num_items:
        bad = smallest if smallest < low else largest
        raise ValueError(
            f"{name} must be item ids in [{low}, {num_items}] (0 is padding, N = {num_items} items); "
            f"got {bad}; map raw ids through the item vocabulary first"
        )


@dataclass(frozen=True)
class ItemFeatures:
    """The item table's KJT plus the layout that turns its looked-up values back into dense tensors.

    Attributes:
        kjt: one key (``"item"``), ``B + M`` rows: the histories' non-padding ids, then candidate rows.
        sequence_mask: ``(B, L)`` bool, True where the history holds an item (id != 0).
        candidate_shape: ``(M, R)``, or ``None`` when no candidates were given.

    Example:
        >>> features = ItemFeatures.from_padded(torch.tensor([[0, 3, 5]]), torch.tensor([[7, 2]]))
        >>> features.kjt.values().tolist(), features.kjt.lengths().tolist()
        ([3, 5, 7, 2], [2, 2])
    """

    kjt: KeyedJaggedTensor
    sequence_mask: torch.Tensor
    candidate_shape: tuple[int, int] | None

    @classmethod
    def from_padded(
        cls,
        sequence_ids: torch.Tensor,
        candidate_ids: torch.Tensor | None = None,
        *,
        num_items: int | None = None,
    ) -> ItemFeatures:
        """Builds the KJT of padded histories and, optionally, candidate rows.

        Args:
            sequence_ids: ``(B, L)`` item ids in ``[0, N]``, 0 = padding (right-aligned histories have
                their padding on the left, but any position may be padding).
            candidate_ids: ``(M, R)`` item ids in ``[1, N]`` to look up as well, or ``None``.
            num_items: N; when given, ids outside the range raise instead of failing inside torchrec.

        Returns:
            The features; ``kjt`` has ``B + M`` rows.

        Raises:
            ShapeError: a tensor is not 2-D integer.
            ValueError: an id lies outside the vocabulary (only checked when ``num_items`` is given).
        """
        _check_ids("sequence_ids", sequence_ids, 2, "(B, L)")
        _check_item_range("sequence_ids", sequence_ids, num_items, low=0)
        ids = sequence_ids.long()  # (B, L)
        mask = ids != 0  # (B, L)
        values = [ids[mask]]  # (T,) non-padding ids in row-major order
        lengths = [mask.sum(dim=1)]  # (B,)
        shape: tuple[int, int] | None = None
        if candidate_ids is not None:
            _check_ids("candidate_ids", candidate_ids, 2, "(M, R)")
            _check_item_range("candidate_ids", candidate_ids, num_items, low=1)
            rows, width = candidate_ids.shape
            shape = (rows, width)
            values.append(candidate_ids.long().reshape(-1))  # (M * R,)
            lengths.append(torch.full((rows,), width, dtype=torch.long, device=ids.device))  # (M,)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=[ITEM_FEATURE], values=torch.cat(values), lengths=torch.cat(lengths)
        )
        return cls(kjt=kjt, sequence_mask=mask, candidate_shape=shape)

    @classmethod
    def from_candidates(cls, candidate_ids: torch.Tensor, *, num_items: int | None = None) -> ItemFeatures:
        """Builds the KJT of candidate rows only (``B = 0`` histories).

        Args:
            candidate_ids: ``(M, R)`` item ids in ``[1, N]``.
            num_items: N, for the range check, as in :meth:`from_padded`.
        """
        empty = torch.zeros(0, 0, dtype=torch.long, device=candidate_ids.device)  # (0, 0)
        return cls.from_padded(empty, candidate_ids, num_items=num_items)

    def unpack(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Splits the looked-up rows back into dense tensors.

        Args:
            values: ``(T, D)`` embeddings in the order of ``kjt.values()``.

        Returns:
            ``(B, L, D)`` history embeddings with exact zeros at padding, and ``(M, R, D)`` candidate
            embeddings (``None`` without candidates).
        """
        num_sequence = int(self.kjt.lengths()[: self.sequence_mask.shape[0]].sum())
        width = values.shape[1]
        batch, length = self.sequence_mask.shape
        sequence = values.new_zeros(batch, length, width)  # (B, L, D)
        sequence[self.sequence_mask] = values[:num_sequence]
        if self.candidate_shape is None:
            return sequence, None
        candidates = values[num_sequence:].reshape(*self.candidate_shape, width)  # (M, R, D)
        return sequence, candidates


@dataclass(frozen=True)
class UserFeatures:
    """The user table's KJT: one hashed id per row.

    Attributes:
        kjt: one key (``"user"``), ``B`` rows of length 1.

    Example:
        >>> UserFeatures.from_user_ids(torch.tensor([3, 12]), num_buckets=10).kjt.values().tolist()
        [3, 2]
    """

    kjt: KeyedJaggedTensor

    @classmethod
    def from_user_ids(cls, user_ids: torch.Tensor, *, num_buckets: int) -> UserFeatures:
        """Hashes ``(B,)`` non-negative user ids into ``num_buckets`` rows (see :func:`hash_user_ids`)."""
        _check_ids("user_ids", user_ids, 1, "(B,)")
        hashed = hash_user_ids(user_ids, num_buckets)  # (B,)
        lengths = torch.ones_like(hashed)  # (B,)
        return cls(
            kjt=KeyedJaggedTensor.from_lengths_sync(keys=[USER_FEATURE], values=hashed, lengths=lengths)
        )


def hash_user_ids(user_ids: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Maps raw user ids to table rows: ``user_id % num_buckets``.

    Modulo keeps consecutive ids (the usual output of a vocabulary) collision-free up to ``num_buckets``
    users and is the same in every process. Users beyond that share rows.

    Args:
        user_ids: ``(B,)`` non-negative integer ids.
        num_buckets: rows of the user table.

    Returns:
        ``(B,)`` int64 rows in ``[0, num_buckets)``.

    Raises:
        ValueError: an id is negative.
    """
    check_positive_int("num_buckets", num_buckets)
    if user_ids.numel() and int(user_ids.min()) < 0:
        raise ValueError(f"user ids must be >= 0; got {int(user_ids.min())}")
    return user_ids.long() % num_buckets  # (B,)
