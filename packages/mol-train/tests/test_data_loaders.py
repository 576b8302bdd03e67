"""Raw loaders: each format read from small files written by the test, errors with file and line."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mol_core.errors import ConfigError
from mol_train.data import (
    DataFormatError,
    Interactions,
    detect_format,
    k_core_filter,
    load_amazon_ratings,
    load_interactions,
    load_movielens_100k,
    load_movielens_csv,
    load_movielens_dat,
    load_user_item_text,
)
from mol_train.data._reader import _parse_slow, read_numeric_columns
from mol_train.data.loaders import _LAYOUTS

ROWS = [(3, 20, 4, 978300760), (1, 10, 5, 978302109), (3, 10, 3, 978300000), (2, 30, 1, 978301968)]


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def _check_rows(interactions: Interactions, rows: list[tuple[int, int, int, int]], *, stamps: bool) -> None:
    assert interactions.users.tolist() == [r[0] for r in rows]
    assert interactions.items.tolist() == [r[1] for r in rows]
    assert interactions.user_ids.tolist() == sorted({r[0] for r in rows})
    assert interactions.item_ids.tolist() == sorted({r[1] for r in rows})
    if stamps:
        assert interactions.timestamps is not None
        assert interactions.timestamps.tolist() == [r[3] for r in rows]
    else:
        assert interactions.timestamps is None


def test_movielens_dat(tmp_path: Path) -> None:
    text = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ROWS)
    _check_rows(load_movielens_dat(_write(tmp_path / "ratings.dat", text)), ROWS, stamps=True)


def test_movielens_csv_with_header_and_half_stars(tmp_path: Path) -> None:
    text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.5,{t}\n" for u, i, r, t in ROWS)
    _check_rows(load_movielens_csv(_write(tmp_path / "ratings.csv", text)), ROWS, stamps=True)


def test_movielens_csv_requires_the_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "ratings.csv", "1,2,3.5,100\n")
    with pytest.raises(DataFormatError, match=r"ratings\.csv, line 1: expected the header"):
        load_movielens_csv(path)


def test_movielens_100k_tabs_and_crlf(tmp_path: Path) -> None:
    text = "".join(f"{u}\t{i}\t{r}\t{t}\r\n" for u, i, r, t in ROWS)
    _check_rows(load_movielens_100k(_write(tmp_path / "u.data", text)), ROWS, stamps=True)


def test_user_item_text_keeps_file_order_without_timestamps(tmp_path: Path) -> None:
    text = "".join(f"{u} {i}\n" for u, i, _, _ in ROWS) + "\n"  # a trailing blank line is fine
    _check_rows(load_user_item_text(_write(tmp_path / "chrono.txt", text)), ROWS, stamps=False)


def test_amazon_string_ids_keep_leading_zeros(tmp_path: Path) -> None:
    rows = [("A1", "0001", 5.0, 10), ("B2", "0002", 4.0, 5), ("A1", "0002", 3.0, 7)]
    path = _write(tmp_path / "ratings_Books.csv", "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    interactions = load_amazon_ratings(path, core=0)
    assert interactions.users.tolist() == ["A1", "B2", "A1"]
    assert interactions.items.tolist() == ["0001", "0002", "0002"]
    assert interactions.timestamps is not None
    assert interactions.timestamps.tolist() == [10, 5, 7]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("1::2::3", r"expected 4 fields separated by '::' \(UserID::MovieID::Rating::Timestamp\); got 3"),
        ("1::x::3::4", r"field 'item' must be a non-negative integer"),
        ("1::2::3::-4", r"field 'timestamp' must be an integer in \[0, 2\*\*53\)"),
        ("1::2::good::4", r"field 'rating' must be a number"),
        ("1::::3::4", r"expected 4 fields|must be a non-negative integer"),
        ("1::2.5::3::4", r"field 'item' must be a non-negative integer"),
        ("1:2::3::4", r"expected 4 fields"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = _write(tmp_path / "ratings.dat", f"1::1::5::1\n2::2::5::2\n{line}\n4::4::4::4\n")
    with pytest.raises(DataFormatError, match=r"ratings\.dat, line 3: " + expected) as info:
        load_movielens_dat(path)
    assert info.value.line == 3
    assert info.value.path == str(path)


def test_error_line_numbers_are_right_across_chunks(tmp_path: Path) -> None:
    lines = [f"{k}\t{k + 1}\t5\t{1000 + k}" for k in range(200)]
    lines[137] = "oops"
    path = _write(tmp_path / "u.data", "\n".join(lines) + "\n")
    for chunk in (7, 64, 1 << 20):
        with pytest.raises(DataFormatError, match=r"line 138: expected 4 fields"):
            read_numeric_columns(path, _LAYOUTS["movielens-100k"], chunk_bytes=chunk)


def test_amazon_malformed_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "ratings_Books.csv", "A,1,5.0,10\nB,2,5.0\n")
    with pytest.raises(DataFormatError, match=r"line 2: expected 4 comma-separated fields"):
        load_amazon_ratings(path)
    path = _write(tmp_path / "ratings_Books.csv", "A,1,5.0,10\nB,2,5.0,soon\n")
    with pytest.raises(DataFormatError, match=r"line 2: expected a numeric rating and an integer timestamp"):
        load_amazon_ratings(path)


def _assert_both_paths_agree(data: bytes, chunk: int) -> None:
    """The chunked reader gives the simple parser's columns, or raises the same error."""
    layout = _LAYOUTS["movielens-dat"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ratings.dat"
        path.write_bytes(data)
        try:
            expected: dict[str, np.ndarray] | str = _parse_slow(data, layout, path, 0)
        except DataFormatError as error:
            expected = str(error)
        try:
            got: dict[str, np.ndarray] | str = read_numeric_columns(path, layout, chunk_bytes=chunk)
        except DataFormatError as error:
            got = str(error)
    if isinstance(expected, str) or isinstance(got, str):
        assert got == expected
    else:
        assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in expected.items()}


_TOKENS = st.sampled_from(["", " ", "\t", "::", ":", ".", "-", "1", "23", "7.5", "x", "\r", "\n", "1e3"])


@settings(max_examples=100, deadline=None)
@given(st.lists(_TOKENS, max_size=40), st.integers(1, 40))
def test_fast_path_agrees_with_the_line_by_line_reference(tokens: list[str], chunk: int) -> None:
    """Arbitrary text: the chunked reader either equals the simple parser or raises the same error."""
    data = "".join(tokens).encode()
    _assert_both_paths_agree(data, chunk)


_FIELD = st.one_of(st.integers(0, 10**12).map(str), st.sampled_from(["3.5", "4.0", "", "x", "1e2", " 7"]))
_ENDING = st.sampled_from(["\n", "\n", "\n", "\r\n", "\n\n"])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.lists(_FIELD, min_size=3, max_size=5), _ENDING), max_size=30), st.integers(8, 200)
)
def test_fast_path_agrees_on_mostly_well_formed_rows(rows: list[tuple[list[str], str]], chunk: int) -> None:
    """Rows of 3 to 5 mostly numeric fields with mixed line endings: both paths agree."""
    data = "".join("::".join(fields) + ending for fields, ending in rows).encode()
    _assert_both_paths_agree(data, chunk)


def test_fast_path_on_a_large_clean_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = rng.integers(0, 10**9, size=(5000, 4))
    path = _write(tmp_path / "ratings.dat", "".join(f"{a}::{b}::{c % 5 + 1}::{d}\n" for a, b, c, d in table))
    columns = read_numeric_columns(path, _LAYOUTS["movielens-dat"], chunk_bytes=4096)
    assert columns["user"].tolist() == table[:, 0].tolist()
    assert columns["item"].tolist() == table[:, 1].tolist()
    assert columns["timestamp"].tolist() == table[:, 3].tolist()


def _naive_k_core(pairs: list[tuple[int, int]], k: int) -> list[int]:
    alive = list(range(len(pairs)))
    while True:
        users: dict[int, int] = {}
        items: dict[int, int] = {}
        for index in alive:
            users[pairs[index][0]] = users.get(pairs[index][0], 0) + 1
            items[pairs[index][1]] = items.get(pairs[index][1], 0) + 1
        kept = [i for i in alive if users[pairs[i][0]] >= k and items[pairs[i][1]] >= k]
        if kept == alive:
            return alive
        alive = kept


@pytest.mark.parametrize("seed", range(5))
def test_k_core_matches_a_naive_fixed_point(seed: int) -> None:
    rnd = random.Random(seed)
    pairs = [(rnd.randrange(30), rnd.randrange(25)) for _ in range(400)]
    interactions = Interactions.from_ids(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    core = k_core_filter(interactions, 5)
    kept = _naive_k_core(pairs, 5)
    assert list(zip(core.users.tolist(), core.items.tolist(), strict=True)) == [pairs[i] for i in kept]
    assert core.user_ids.tolist() == sorted({pairs[i][0] for i in kept})
    if len(core):
        assert np.bincount(core.user_codes).min() >= 5
        assert np.bincount(core.item_codes).min() >= 5


def test_amazon_loader_applies_the_5_core(tmp_path: Path) -> None:
    lines = [f"U{u},I{i},5.0,{u * 10 + i}" for u in range(6) for i in range(5)]  # a 5-core block
    lines += ["U9,I0,1.0,1", "U0,I9,1.0,2"]  # a user and an item with one interaction each
    path = _write(tmp_path / "ratings_Books.csv", "\n".join(lines) + "\n")
    interactions = load_amazon_ratings(path)
    assert len(interactions) == 30
    assert interactions.user_ids.tolist() == [f"U{u}" for u in range(6)]
    assert interactions.item_ids.tolist() == [f"I{i}" for i in range(5)]


def test_detect_format_and_dispatch(tmp_path: Path) -> None:
    assert detect_format("a/ratings.dat") == "movielens-dat"
    assert detect_format("ratings.csv") == "movielens-csv"
    assert detect_format("u.data") == "movielens-100k"
    assert detect_format("ratings_Books.csv") == "amazon-csv"
    assert detect_format("user_movie_chrono.txt") == "user-item"
    with pytest.raises(ConfigError, match="cannot tell the format"):
        detect_format("data.parquet")
    with pytest.raises(ConfigError, match="unknown data format 'parquet'; expected one of"):
        load_interactions(tmp_path / "x", "parquet")
    path = _write(tmp_path / "u.data", "1\t2\t3\t4\n")
    assert len(load_interactions(path, "movielens-100k")) == 1


def test_empty_file_gives_no_interactions(tmp_path: Path) -> None:
    assert len(load_movielens_dat(_write(tmp_path / "ratings.dat", ""))) == 0
