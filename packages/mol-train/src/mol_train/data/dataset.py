"""The prepared data set: per-user chronological item sequences in CSR layout, saved as one npz file.

Ids:
    * Item ids are *internal* ids 1..N; 0 is padding. Internal id j is the external id
      ``item_vocab[j - 1]``; the vocabulary is sorted, so the mapping does not depend on file order.
    * Users are rows 0..U-1; row u is the external user ``user_ids[u]``.

Leave-one-out split of a row with n >= 3 items ``s[0..n-1]`` (oldest first): the test target is ``s[n-1]``
with history ``s[:n-1]``; the validation target is ``s[n-2]`` with history ``s[:n-2]``; training uses
``s[:n-2]`` (each position predicts the next item).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mol_core.atomic import write_bytes_atomically
from mol_core.errors import ArtifactError
from mol_train.data.errors import DataError

__all__ = ["DATASET_FILE", "FORMAT_VERSION", "MIN_SEQUENCE_LENGTH", "SequenceDataset"]

FORMAT_VERSION = 1
"""The version of the npz layout written by :meth:`SequenceDataset.save`."""

DATASET_FILE = "dataset.npz"
"""The file name of the data set inside a prepared directory."""

MIN_SEQUENCE_LENGTH = 3
"""Every user needs a training item, a validation target and a test target."""

_FORMAT_TAG = "mol-train.SequenceDataset"
_REQUIRED = ("format", "format_version", "items", "offsets", "user_ids", "item_vocab", "max_len", "name")


@dataclass(frozen=True, eq=False)
class SequenceDataset:
    """U users' item sequences, oldest first, concatenated (CSR), with the item vocabulary.

    Attributes:
        items: ``(T,)`` int64 internal item ids in ``[1, N]``, user after user.
        offsets: ``(U + 1,)`` int64; user u's sequence is ``items[offsets[u]:offsets[u + 1]]``.
        timestamps: ``(T,)`` int64 seconds aligned with ``items``, or ``None``.
        user_ids: ``(U,)`` external user ids (int64 or str).
        item_vocab: ``(N,)`` external item ids, sorted; internal id j is ``item_vocab[j - 1]``.
        max_len: L, the longest history a model reads (sequences keep at most L + 1 items).
        name: a label (the source file or ``synthetic``).

    Raises:
        DataError: the arrays are inconsistent, or a user has fewer than 3 items.
    """

    items: np.ndarray
    offsets: np.ndarray
    timestamps: np.ndarray | None
    user_ids: np.ndarray
    item_vocab: np.ndarray
    max_len: int
    name: str = ""

    def __post_init__(self) -> None:
        items, offsets = self.items, self.offsets
        if items.dtype != np.int64 or items.ndim != 1:
            raise DataError(f"items must be a (T,) int64 array; got {items.dtype} with shape {items.shape}")
        if offsets.dtype != np.int64 or offsets.ndim != 1 or offsets.shape[0] < 1:
            raise DataError(f"offsets must be a (U + 1,) int64 array; got {offsets.dtype} {offsets.shape}")
        if offsets[0] != 0 or offsets[-1] != items.shape[0] or bool((np.diff(offsets) < 0).any()):
            raise DataError("offsets must start at 0, never decrease and end at len(items)")
        if self.user_ids.shape != (offsets.shape[0] - 1,):
            raise DataError(
                f"user_ids must have shape (U,) = ({offsets.shape[0] - 1},); got {self.user_ids.shape}"
            )
        stamps = self.timestamps
        if stamps is not None and (stamps.dtype != np.int64 or stamps.shape != items.shape):
            raise DataError(
                f"timestamps must be an int64 array shaped like items {items.shape}; "
                f"got {stamps.dtype} {stamps.shape}"
            )
        if items.size and (int(items.min()) < 1 or int(items.max()) > self.num_items):
            raise DataError(f"item ids must lie in [1, N] = [1, {self.num_items}] (0 is padding)")
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 2:
            raise DataError(f"max_len must be an integer >= 2; got {self.max_len!r}")
        if self.num_users and int(self.lengths.min()) < MIN_SEQUENCE_LENGTH:
            raise DataError(
                f"every user needs at least {MIN_SEQUENCE_LENGTH} items (training, validation, test); "
                f"{int((self.lengths < MIN_SEQUENCE_LENGTH).sum())} users have fewer"
            )

    @property
    def num_users(self) -> int:
        """U, the number of users (rows)."""
        return int(self.offsets.shape[0] - 1)

    @property
    def num_items(self) -> int:
        """N, the number of items in the vocabulary (internal ids 1..N)."""
        return int(self.item_vocab.shape[0])

    @property
    def num_interactions(self) -> int:
        """T, the total number of stored interactions."""
        return int(self.items.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """``(U,)`` int64 sequence length of each user."""
        return np.diff(self.offsets)

    def sequence(self, row: int) -> np.ndarray:
        """User ``row``'s ``(n,)`` internal item ids, oldest first."""
        return self.items[self.offsets[row] : self.offsets[row + 1]]

    def encode_items(self, external: np.ndarray | list[int] | list[str]) -> np.ndarray:
        """External item ids -> ``(n,)`` int64 internal ids in ``[1, N]``.

        Raises:
            DataError: an id is not in the vocabulary (the message names the first few).
        """
        try:
            wanted = np.asarray(external, dtype=self.item_vocab.dtype)
        except (TypeError, ValueError) as error:
            raise DataError(
                f"{str(external)[:80]} are not item ids of this vocabulary ({self.item_vocab.dtype}): {error}"
            ) from None
        position = np.searchsorted(self.item_vocab, wanted)  # (n,)
        clipped = np.minimum(position, max(self.num_items - 1, 0))
        known = (
            (position < self.num_items) & (self.item_vocab[clipped] == wanted)
            if self.num_items
            else position < 0
        )
        if not bool(np.all(known)):
            unknown = wanted[~known][:5].tolist()
            raise DataError(
                f"{int((~known).sum())} item ids are not in the vocabulary of {self.num_items} items, "
                f"for example {unknown}; use ids from the data set the model was trained on"
            )
        return (position + 1).astype(np.int64)

    def decode_items(self, internal: np.ndarray | list[int]) -> np.ndarray:
        """Internal ids in ``[1, N]`` -> external ids.

        Raises:
            DataError: an id is outside ``[1, N]``.
        """
        ids = np.asarray(internal, dtype=np.int64)
        if ids.size and (int(ids.min()) < 1 or int(ids.max()) > self.num_items):
            raise DataError(f"internal item ids must lie in [1, N] = [1, {self.num_items}]")
        return self.item_vocab[ids - 1]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the data set to one npz file, atomically (a temporary file renamed over ``path``).

        Raises:
            OSError: the file cannot be written (nothing is left at ``path`` or next to it).
        """
        arrays: dict[str, np.ndarray] = {
            "format": np.array(_FORMAT_TAG),
            "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
            "items": self.items,
            "offsets": self.offsets,
            "user_ids": self.user_ids,
            "item_vocab": self.item_vocab,
            "max_len": np.array(self.max_len, dtype=np.int64),
            "name": np.array(self.name),
        }
        if self.timestamps is not None:
            arrays["timestamps"] = self.timestamps
        write_bytes_atomically(path, lambda out: np.savez(out, allow_pickle=False, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SequenceDataset:
        """Reads a data set written by :meth:`save`; ``path`` may be the npz file or a prepared directory.

        Raises:
            ArtifactError: the file is missing, corrupt, not a data set, or of another format version.
        """
        source = Path(path)
        if source.is_dir():
            source = source / DATASET_FILE
        if not source.is_file():
            raise ArtifactError(f"no prepared data set at {source}; run `mol-train data prepare` first")
        try:
            with np.load(source, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise ArtifactError(
                f"{source} is not a readable data set file ({error}); prepare it again"
            ) from None
        missing = [key for key in _REQUIRED if key not in arrays]
        if missing or str(arrays["format"]) != _FORMAT_TAG:
            raise ArtifactError(f"{source} is not a mol-train data set (missing {missing}); prepare it again")
        version = int(arrays["format_version"])
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{source} has data set format version {version}; this mol-train reads version "
                f"{FORMAT_VERSION}. Prepare the data again with this version (`mol-train data prepare`)"
            )
        try:
            return cls(
                items=arrays["items"],
                offsets=arrays["offsets"],
                timestamps=arrays.get("timestamps"),
                user_ids=arrays["user_ids"],
                item_vocab=arrays["item_vocab"],
                max_len=int(arrays["max_len"]),
                name=str(arrays["name"]),
            )
        except DataError as error:
            raise ArtifactError(f"{source} holds an inconsistent data set: {error}") from None
