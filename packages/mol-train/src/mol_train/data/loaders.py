"""Loaders for the raw interaction formats, each returning :class:`Interactions` in file order.

| format name        | file                          | line layout                                   |
|--------------------|-------------------------------|-----------------------------------------------|
| ``movielens-dat``  | ML-1M/ML-10M ``ratings.dat``  | ``UserID::MovieID::Rating::Timestamp``        |
| ``movielens-csv``  | ML-20M ``ratings.csv``        | header ``userId,movieId,rating,timestamp``    |
| ``movielens-100k`` | ML-100K ``u.data``            | ``user<TAB>item<TAB>rating<TAB>timestamp``    |
| ``amazon-csv``     | Amazon ``ratings_Books.csv``  | ``user,item,rating,timestamp`` (string ids)   |
| ``user-item``      | ``user_movie_chrono.txt``     | ``user item``, grouped by user, in time order |

Ratings are checked to be numbers and then dropped: every rating counts as one interaction, as in the
source papers. Numeric ids are kept as int64, Amazon ids as strings.
"""

from __future__ import annotations

import csv
import logging
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mol_core.errors import ConfigError
from mol_train.data._reader import NumericLayout, read_numeric_columns
from mol_train.data.errors import DataFormatError

__all__ = [
    "FORMATS",
    "Interactions",
    "detect_format",
    "k_core_filter",
    "load_amazon_ratings",
    "load_interactions",
    "load_movielens_100k",
    "load_movielens_csv",
    "load_movielens_dat",
    "load_user_item_text",
]

logger = logging.getLogger(__name__)

_RATING_FIELDS = ("user", "item", "rating", "timestamp")
_ID_FIELDS = ("user", "item", "timestamp")
_LAYOUTS = {
    "movielens-dat": NumericLayout("UserID::MovieID::Rating::Timestamp", b"::", _RATING_FIELDS, _ID_FIELDS),
    "movielens-csv": NumericLayout(
        "userId,movieId,rating,timestamp",
        b",",
        _RATING_FIELDS,
        _ID_FIELDS,
        b"userId,movieId,rating,timestamp",
    ),
    "movielens-100k": NumericLayout(
        "user<TAB>item<TAB>rating<TAB>timestamp", b"\t", _RATING_FIELDS, _ID_FIELDS
    ),
    "user-item": NumericLayout("user_id item_id", None, ("user", "item"), ("user", "item")),
}

FORMATS: tuple[str, ...] = ("movielens-dat", "movielens-csv", "movielens-100k", "amazon-csv", "user-item")
"""The format names accepted by :func:`load_interactions` and :func:`~mol_train.data.prepare`."""


@dataclass(frozen=True, eq=False)
class Interactions:
    """M interactions in file order, with users and items factorised against sorted id vocabularies.

    Attributes:
        user_codes: ``(M,)`` int64 index of each interaction's user in ``user_ids``.
        item_codes: ``(M,)`` int64 index of each interaction's item in ``item_ids``.
        user_ids: ``(U,)`` the distinct external user ids, sorted (int64, or str for Amazon).
        item_ids: ``(I,)`` the distinct external item ids, sorted.
        timestamps: ``(M,)`` int64 seconds, or ``None`` when the format has none.
        source: where the interactions came from (a path), for messages.
    """

    user_codes: np.ndarray
    item_codes: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray | None
    source: str = ""

    @classmethod
    def from_ids(
        cls, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None = None, source: str = ""
    ) -> Interactions:
        """Factorises ``(M,)`` external user and item ids (int or str arrays), keeping their order."""
        user_ids, user_codes = np.unique(np.asarray(users), return_inverse=True)
        item_ids, item_codes = np.unique(np.asarray(items), return_inverse=True)
        stamps = None if timestamps is None else np.asarray(timestamps, dtype=np.int64)
        return cls(
            user_codes.astype(np.int64).reshape(-1),
            item_codes.astype(np.int64).reshape(-1),
            user_ids,
            item_ids,
            stamps,
            source,
        )

    def __len__(self) -> int:
        return int(self.user_codes.shape[0])

    @property
    def num_users(self) -> int:
        """U, the number of distinct users."""
        return int(self.user_ids.shape[0])

    @property
    def num_items(self) -> int:
        """I, the number of distinct items."""
        return int(self.item_ids.shape[0])

    @property
    def users(self) -> np.ndarray:
        """``(M,)`` external user id of each interaction."""
        users: np.ndarray = self.user_ids[self.user_codes]
        return users

    @property
    def items(self) -> np.ndarray:
        """``(M,)`` external item id of each interaction."""
        items: np.ndarray = self.item_ids[self.item_codes]
        return items

    def select(self, keep: np.ndarray) -> Interactions:
        """The interactions where the ``(M,)`` bool mask ``keep`` is True, order kept, unused ids dropped."""
        users, user_codes = np.unique(self.user_codes[keep], return_inverse=True)
        items, item_codes = np.unique(self.item_codes[keep], return_inverse=True)
        return Interactions(
            user_codes.astype(np.int64).reshape(-1),
            item_codes.astype(np.int64).reshape(-1),
            self.user_ids[users],
            self.item_ids[items],
            None if self.timestamps is None else self.timestamps[keep],
            self.source,
        )


def load_movielens_dat(path: str | os.PathLike[str]) -> Interactions:
    """Reads a MovieLens ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``, ML-1M and ML-10M).

    Raises:
        DataFormatError: a malformed line (file and line number in the message).
    """
    return _load_numeric(path, "movielens-dat")


def load_movielens_csv(path: str | os.PathLike[str]) -> Interactions:
    """Reads an ML-20M/ML-25M ``ratings.csv`` (header ``userId,movieId,rating,timestamp``).

    Raises:
        DataFormatError: a missing header or a malformed line.
    """
    return _load_numeric(path, "movielens-csv")


def load_movielens_100k(path: str | os.PathLike[str]) -> Interactions:
    """Reads an ML-100K ``u.data`` (tab-separated ``user item rating timestamp``).

    Raises:
        DataFormatError: a malformed line.
    """
    return _load_numeric(path, "movielens-100k")


def load_user_item_text(path: str | os.PathLike[str]) -> Interactions:
    """Reads ``user_id item_id`` lines (whitespace-separated), grouped by user in time order; no timestamps.

    The order of the lines is the chronological order; :attr:`Interactions.timestamps` is ``None``.

    Raises:
        DataFormatError: a malformed line.
    """
    return _load_numeric(path, "user-item")


def load_amazon_ratings(path: str | os.PathLike[str], *, core: int = 5) -> Interactions:
    """Reads an Amazon ratings CSV (no header, ``user,item,rating,timestamp``) and applies the k-core filter.

    This is the layout of the public 2014 per-category ratings files (``ratings_Books.csv``); ids are kept
    as strings (ISBN-like item ids keep their leading zeros).

    Args:
        path: the CSV file.
        core: the k of :func:`k_core_filter` (5 in the source papers); 0 or 1 keeps everything.

    Raises:
        DataFormatError: a malformed line.
    """
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    user_codes = array("q")
    item_codes = array("q")
    stamps = array("q")
    expected = "4 comma-separated fields user,item,rating,timestamp"
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        try:
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != 4:
                    raise DataFormatError(path, line, f"expected {expected}; got {len(row)} fields: {row!r}")
                user, item, rating, stamp = (field.strip() for field in row)
                if not user or not item:
                    raise DataFormatError(path, line, f"expected non-empty user and item ids; got {row!r}")
                try:
                    float(rating)
                    stamp_value = int(stamp)
                except ValueError:
                    raise DataFormatError(
                        path, line, f"expected a numeric rating and an integer timestamp; got {row!r}"
                    ) from None
                user_codes.append(user_index.setdefault(user, len(user_index)))
                item_codes.append(item_index.setdefault(item, len(item_index)))
                stamps.append(stamp_value)
        except UnicodeDecodeError as error:
            raise DataFormatError(path, reader.line_num + 1, f"expected UTF-8 text: {error}") from None
        except csv.Error as error:
            raise DataFormatError(path, reader.line_num, f"expected {expected}: {error}") from None
    users, user_remap = _sorted_vocab(user_index)
    items, item_remap = _sorted_vocab(item_index)
    interactions = Interactions(
        user_remap[np.frombuffer(user_codes, dtype=np.int64)],
        item_remap[np.frombuffer(item_codes, dtype=np.int64)],
        users,
        items,
        np.frombuffer(stamps, dtype=np.int64).copy(),
        os.fspath(path),
    )
    return k_core_filter(interactions, core) if core > 1 else interactions


def k_core_filter(interactions: Interactions, k: int) -> Interactions:
    """Drops users and items with fewer than k interactions, repeatedly, until none is left to drop.

    Args:
        interactions: the interactions.
        k: the minimum count per user and per item (5 for the Amazon Books protocol).

    Returns:
        The k-core, in the original order, with unused ids removed from the vocabularies (it may be empty).

    Raises:
        ConfigError: ``k`` is not a non-negative integer.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"k must be a non-negative integer; got {k!r}")
    keep = np.ones(len(interactions), dtype=bool)  # (M,)
    rounds = 0
    while True:
        user_counts = np.bincount(interactions.user_codes[keep], minlength=interactions.num_users)  # (U,)
        item_counts = np.bincount(interactions.item_codes[keep], minlength=interactions.num_items)  # (I,)
        drop = keep & (
            (user_counts[interactions.user_codes] < k) | (item_counts[interactions.item_codes] < k)
        )
        if not drop.any():
            break
        keep &= ~drop
        rounds += 1
    logger.info("%d-core: kept %d of %d interactions after %d rounds", k, keep.sum(), keep.size, rounds)
    return interactions.select(keep)


def load_interactions(path: str | os.PathLike[str], fmt: str, *, core: int | None = None) -> Interactions:
    """Reads a file in one of :data:`FORMATS`.

    Args:
        path: the file.
        fmt: the format name.
        core: a k-core filter to apply (default: 5 for ``amazon-csv``, none for the others).

    Raises:
        ConfigError: an unknown format.
        DataFormatError: a malformed line.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "amazon-csv":
        return load_amazon_ratings(path, core=5 if core is None else core)
    interactions = _load_numeric(path, fmt)
    return k_core_filter(interactions, core) if core is not None and core > 1 else interactions


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guesses the format from a file name (``*.dat``, ``ratings.csv``, ``u.data``, ``ratings_*.csv``).

    Raises:
        ConfigError: the name is not one of the known ones; pass the format explicitly.
    """
    name = Path(path).name
    if name.endswith(".dat") and name != "u.data":
        return "movielens-dat"
    if name == "u.data":
        return "movielens-100k"
    if name.startswith("ratings_") and name.endswith(".csv"):
        return "amazon-csv"
    if name == "ratings.csv":
        return "movielens-csv"
    if name.endswith(".txt"):
        return "user-item"
    raise ConfigError(
        f"cannot tell the format of {os.fspath(path)!r} from its name; pass one of {', '.join(FORMATS)}"
    )


def _load_numeric(path: str | os.PathLike[str], fmt: str) -> Interactions:
    columns = read_numeric_columns(path, _LAYOUTS[fmt])
    interactions = Interactions.from_ids(
        columns["user"], columns["item"], columns.get("timestamp"), source=os.fspath(path)
    )
    logger.info(
        "read %s: %d interactions, %d users, %d items",
        path,
        len(interactions),
        interactions.num_users,
        interactions.num_items,
    )
    return interactions


def _sorted_vocab(index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids and the map from first-appearance codes to sorted codes."""
    keys = np.array(list(index), dtype=str) if index else np.zeros(0, dtype=str)  # (U,)
    order = np.argsort(keys, kind="stable")  # (U,)
    remap = np.empty(keys.shape[0], dtype=np.int64)  # (U,)
    remap[order] = np.arange(keys.shape[0], dtype=np.int64)
    return keys[order], remap
