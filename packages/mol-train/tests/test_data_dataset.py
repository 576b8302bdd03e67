"""Preprocessing, the SequenceDataset file and prepare(): checked against naive per-user references."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from mol_core.errors import ArtifactError, ConfigError
from mol_train.data import (
    DATASET_FILE,
    INFO_FILE,
    DataError,
    DataFormatError,
    Interactions,
    SequenceDataset,
    build_sequences,
    make_synthetic,
    prepare,
)


def _naive_sequences(
    rows: list[tuple[int, int, int]], max_len: int, *, use_time: bool
) -> dict[int, list[tuple[int, int]]]:
    """user -> [(item, time)], stably sorted by time (or file order), most recent max_len + 1, >= 3 kept."""
    by_user: dict[int, list[tuple[int, int, int]]] = {}
    for position, (user, item, time) in enumerate(rows):
        by_user.setdefault(user, []).append((time if use_time else 0, position, item))
    out = {}
    for user in sorted(by_user):
        events = sorted(by_user[user])  # time, then file position: a stable sort by time
        if len(events) >= 3:
            out[user] = [(item, time) for time, _, item in events][-(max_len + 1) :]
    return out


@pytest.mark.parametrize("use_time", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_build_sequences_matches_a_naive_grouping(seed: int, use_time: bool) -> None:
    rnd = random.Random(seed)
    rows = [(rnd.randrange(12), rnd.randrange(40) * 7, rnd.randrange(5)) for _ in range(150)]  # many ties
    interactions = Interactions.from_ids(
        np.array([r[0] for r in rows]),
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]) if use_time else None,
    )
    dataset = build_sequences(interactions, max_len=6)
    expected = _naive_sequences(rows, 6, use_time=use_time)
    assert dataset.user_ids.tolist() == list(expected)
    assert dataset.item_vocab.tolist() == sorted({r[1] for r in rows})  # every item, also dropped ones
    for row, user in enumerate(expected):
        assert dataset.item_vocab[dataset.sequence(row) - 1].tolist() == [item for item, _ in expected[user]]
        if use_time:
            assert dataset.timestamps is not None
            got = dataset.timestamps[dataset.offsets[row] : dataset.offsets[row + 1]].tolist()
            assert got == [time for _, time in expected[user]]
    assert dataset.timestamps is None or use_time


def test_short_users_are_dropped_and_nothing_left_is_an_error() -> None:
    interactions = Interactions.from_ids(np.array([1, 1, 2, 2, 2]), np.array([5, 6, 5, 6, 7]))
    dataset = build_sequences(interactions, max_len=10)
    assert dataset.user_ids.tolist() == [2]
    assert dataset.num_items == 3
    with pytest.raises(DataError, match="no user has at least 3 interactions"):
        build_sequences(Interactions.from_ids(np.array([1, 1]), np.array([5, 6])), max_len=10)
    with pytest.raises(ConfigError, match="max_len must be an integer >= 2"):
        build_sequences(interactions, max_len=1)
    with pytest.raises(ConfigError, match="min_interactions must be >= 3"):
        build_sequences(interactions, max_len=5, min_interactions=2)


@pytest.mark.parametrize("with_timestamps", [True, False])
def test_save_load_round_trip(tmp_path: Path, with_timestamps: bool) -> None:
    dataset = make_synthetic(num_users=30, num_items=40, num_clusters=4, with_timestamps=with_timestamps)
    dataset.save(tmp_path / "d.npz")
    loaded = SequenceDataset.load(tmp_path / "d.npz")
    for name in ("items", "offsets", "user_ids", "item_vocab"):
        assert np.array_equal(getattr(loaded, name), getattr(dataset, name))
    assert (loaded.timestamps is None) == (not with_timestamps)
    if dataset.timestamps is not None:
        assert loaded.timestamps is not None
        assert np.array_equal(loaded.timestamps, dataset.timestamps)
    assert (loaded.max_len, loaded.name) == (dataset.max_len, dataset.name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]  # no temporary file left


def test_string_ids_round_trip_and_vocabulary_lookups(tmp_path: Path) -> None:
    interactions = Interactions.from_ids(
        np.array(["u1"] * 4 + ["u2"] * 3), np.array(["0002", "0001", "0003", "0001", "0009", "0002", "0001"])
    )
    dataset = build_sequences(interactions, max_len=5)
    dataset.save(tmp_path / "d.npz")
    loaded = SequenceDataset.load(tmp_path / "d.npz")
    assert loaded.item_vocab.tolist() == ["0001", "0002", "0003", "0009"]
    assert loaded.user_ids.tolist() == ["u1", "u2"]
    assert loaded.encode_items(["0009", "0001"]).tolist() == [4, 1]
    assert loaded.decode_items([2, 3]).tolist() == ["0002", "0003"]
    with pytest.raises(
        DataError, match=r"1 item ids are not in the vocabulary of 4 items, for example \['0004'\]"
    ):
        loaded.encode_items(["0001", "0004"])
    with pytest.raises(DataError, match=r"must lie in \[1, N\] = \[1, 4\]"):
        loaded.decode_items([0])
    numeric = make_synthetic(num_users=5, num_items=10, num_clusters=2)
    with pytest.raises(DataError, match="not item ids of this vocabulary"):
        numeric.encode_items(["abc"])


def test_load_rejects_other_versions_corrupt_and_missing_files(tmp_path: Path) -> None:
    dataset = make_synthetic(num_users=10, num_items=20, num_clusters=2)
    dataset.save(tmp_path / "d.npz")
    with np.load(tmp_path / "d.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["format_version"] = np.array(99)
    np.savez(tmp_path / "v99.npz", **arrays)
    with pytest.raises(ArtifactError, match="format version 99; this mol-train reads version 1"):
        SequenceDataset.load(tmp_path / "v99.npz")
    (tmp_path / "bad.npz").write_bytes((tmp_path / "d.npz").read_bytes()[:100])
    with pytest.raises(ArtifactError, match="is not a readable data set file"):
        SequenceDataset.load(tmp_path / "bad.npz")
    with pytest.raises(ArtifactError, match="no prepared data set at"):
        SequenceDataset.load(tmp_path / "missing")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ArtifactError, match="is not a mol-train data set"):
        SequenceDataset.load(tmp_path / "other.npz")
    arrays["format_version"] = np.array(1)
    arrays["items"] = arrays["items"] + 1000
    np.savez(tmp_path / "inconsistent.npz", **arrays)
    with pytest.raises(ArtifactError, match=r"inconsistent data set: item ids must lie in \[1, N\]"):
        SequenceDataset.load(tmp_path / "inconsistent.npz")


def test_dataset_validates_its_arrays() -> None:
    vocab = np.arange(1, 4)
    with pytest.raises(DataError, match="at least 3 items"):
        SequenceDataset(np.array([1, 2], dtype=np.int64), np.array([0, 2]), None, np.array([7]), vocab, 5)
    with pytest.raises(DataError, match="offsets must start at 0"):
        SequenceDataset(np.array([1, 2, 3], dtype=np.int64), np.array([0, 2]), None, np.array([7]), vocab, 5)
    with pytest.raises(DataError, match=r"items must be a \(T,\) int64 array"):
        SequenceDataset(np.array([1.0, 2.0, 3.0]), np.array([0, 3]), None, np.array([7]), vocab, 5)


def _write_ratings(path: Path, rows: list[tuple[int, int, int]]) -> Path:
    path.write_text("".join(f"{u}::{i}::4::{t}\n" for u, i, t in rows))
    return path


def test_prepare_writes_a_directory_atomically(tmp_path: Path) -> None:
    rows = [(u, 100 + (u * 7 + k) % 13, 1000 - k) for u in range(1, 6) for k in range(u + 2)]
    source = _write_ratings(tmp_path / "ratings.dat", rows)
    out = tmp_path / "prepared"
    dataset = prepare(source, "movielens-dat", out, max_len=3)
    assert sorted(p.name for p in out.iterdir()) == [DATASET_FILE, INFO_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "ratings.dat"]
    info = json.loads((out / INFO_FILE).read_text())
    assert (info["users"], info["max_len"], info["has_timestamps"]) == (5, 3, True)
    loaded = SequenceDataset.load(out)
    assert np.array_equal(loaded.items, dataset.items)
    assert loaded.lengths.tolist() == [3, 4, 4, 4, 4]  # max_len + 1 = 4 kept
    # Timestamps decrease in the file, so each user's sequence is the file order reversed.
    first_user = [i for u, i, _ in rows if u == 1][::-1]
    assert loaded.item_vocab[loaded.sequence(0) - 1].tolist() == first_user
    with pytest.raises(ConfigError, match="already exists; pass overwrite=True"):
        prepare(source, "movielens-dat", out)
    prepare(source, "movielens-dat", out, max_len=10, overwrite=True)
    assert SequenceDataset.load(out).max_len == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "ratings.dat"]


def test_prepare_errors_leave_nothing_behind(tmp_path: Path) -> None:
    empty = tmp_path / "ratings.dat"
    empty.write_text("")
    with pytest.raises(DataError, match="holds no interactions"):
        prepare(empty, "movielens-dat", tmp_path / "out")
    small = _write_ratings(tmp_path / "small.dat", [(1, 1, 1), (1, 2, 2), (2, 1, 1)])
    with pytest.raises(DataError, match="no user has at least 3 interactions"):
        prepare(small, "movielens-dat", tmp_path / "out")
    broken = tmp_path / "broken.dat"
    broken.write_text("1::2::3::4\n1::2::3\n")
    with pytest.raises(DataFormatError, match=r"broken\.dat, line 2"):
        prepare(broken, "movielens-dat", tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown data format"):
        prepare(broken, "csv", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.dat", "ratings.dat", "small.dat"]
