"""The loaders on the real ML-1M and ML-100K files under ../shared/data (skipped when absent)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from mol_train.data import SequenceDataset, eval_batch, load_movielens_100k, load_user_item_text, prepare

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
ML1M = DATA / "ml-1m" / "user_movie_chrono.txt"
ML100K = DATA / "ml-100k" / "u.data"


@pytest.mark.skipif(not ML1M.is_file(), reason="../shared/data/ml-1m is not present")
def test_ml1m_chronological_text(tmp_path: Path) -> None:
    start = time.perf_counter()
    interactions = load_user_item_text(ML1M)
    assert time.perf_counter() - start < 10.0  # about 0.3 s on 2 CPU cores
    assert (len(interactions), interactions.num_users, interactions.num_items) == (1_000_209, 6_040, 3_706)
    assert int((interactions.users == 1).sum()) == 53
    assert int((interactions.items == 2858).sum()) == 3_428
    dataset = prepare(ML1M, "user-item", tmp_path / "ml-1m", max_len=200)
    assert dataset.timestamps is None
    assert (dataset.num_users, dataset.num_items) == (6_040, 3_706)
    assert int(dataset.lengths.max()) == 201
    first = [int(line.split()[1]) for line in ML1M.read_text().splitlines()[:53]]
    assert dataset.decode_items(dataset.sequence(0)).tolist() == first  # user 1, file order kept
    loaded = SequenceDataset.load(tmp_path / "ml-1m")
    rows = np.arange(loaded.num_users)
    valid, test = eval_batch(loaded, rows, "valid"), eval_batch(loaded, rows, "test")
    assert valid.targets.numel() == test.targets.numel() == 6_040
    assert int(test.targets[0]) == int(loaded.encode_items([first[-1]])[0])
    assert int(valid.targets[0]) == int(loaded.encode_items([first[-2]])[0])
    assert int(test.lengths.max()) == 200


@pytest.mark.skipif(not ML100K.is_file(), reason="../shared/data/ml-100k is not present")
def test_ml100k_u_data() -> None:
    interactions = load_movielens_100k(ML100K)
    assert (len(interactions), interactions.num_users, interactions.num_items) == (100_000, 943, 1_682)
    assert interactions.timestamps is not None
    assert interactions.users[:2].tolist() == [196, 186]
    assert interactions.timestamps[:2].tolist() == [881250949, 891717742]
