"""Chunked reading of all-numeric delimited text files (ratings.dat, ratings.csv, u.data, "user item").

Each chunk (about 16 MiB of whole lines) first goes through a vectorised fast path: numpy checks that every
byte is a digit, a dot, the separator or a newline, that every line has exactly the expected number of
separators and no empty field, then parses all numbers at once. When any check fails, the same chunk is
re-read line by line by the simple parser, which is the reference: it either accepts the chunk (blank
lines, ``\\r\\n``, exponents, extra whitespace) or raises a :class:`DataFormatError` naming the file, the
line and what was expected. Both paths give identical columns (tested).
"""

from __future__ import annotations

import os
import warnings
from array import array
from dataclasses import dataclass

import numpy as np

from mol_train.data.errors import DataFormatError

__all__ = ["NumericLayout", "read_numeric_columns"]

_CHUNK_BYTES = 1 << 24
_MAX_EXACT = float(2**53)  # integers above this are not exact in float64


@dataclass(frozen=True)
class NumericLayout:
    """The layout of one numeric text format.

    Attributes:
        description: the line layout shown in error messages, e.g. ``UserID::MovieID::Rating::Timestamp``.
        separator: the field separator; ``None`` means any run of whitespace.
        fields: the field names, in file order.
        integer_fields: the fields that must be non-negative integers and are returned; the other fields
            must be numbers and are checked, then dropped.
        header: the exact first line when the format has a header, else ``None``.
    """

    description: str
    separator: bytes | None
    fields: tuple[str, ...]
    integer_fields: tuple[str, ...]
    header: bytes | None = None


def read_numeric_columns(
    path: str | os.PathLike[str], layout: NumericLayout, *, chunk_bytes: int = _CHUNK_BYTES
) -> dict[str, np.ndarray]:
    """Reads the integer fields of a delimited numeric text file, in file order.

    Args:
        path: the file.
        layout: its format.
        chunk_bytes: how many bytes to read per chunk (whole lines are always completed).

    Returns:
        One ``(M,)`` int64 array per name in ``layout.integer_fields``, M = number of non-blank data lines.

    Raises:
        DataFormatError: a malformed line or header (the message names file and line).
        OSError: the file cannot be read.
    """
    columns: dict[str, list[np.ndarray]] = {name: [] for name in layout.integer_fields}
    with open(path, "rb") as handle:
        lines_done = 0
        if layout.header is not None:
            first = handle.readline().rstrip(b"\r\n")
            lines_done = 1
            if first != layout.header:
                raise DataFormatError(
                    path, 1, f"expected the header {_show(layout.header)}; got {_show(first)}"
                )
        while True:
            chunk = handle.read(chunk_bytes)
            if not chunk:
                break
            if not chunk.endswith(b"\n"):
                chunk += handle.readline()
            parsed = _parse_fast(chunk, layout)
            if parsed is None:
                parsed = _parse_slow(chunk, layout, path, lines_done)
            lines_done += chunk.count(b"\n")
            for name, values in parsed.items():
                columns[name].append(values)
    return {
        name: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        for name, parts in columns.items()
    }


def _parse_fast(chunk: bytes, layout: NumericLayout) -> dict[str, np.ndarray] | None:
    """Vectorised parse of a chunk of whole lines; ``None`` when anything looks unusual."""
    data = chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
    separator = layout.separator if layout.separator is not None else b" "
    if separator != b" ":
        data = data.replace(separator, b" ")
    if not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, dtype=np.uint8)  # (bytes,)
    allowed = np.zeros(256, dtype=bool)
    allowed[ord("0") : ord("9") + 1] = True
    allowed[[ord(" "), ord("\n"), ord(".")]] = True
    if not allowed[buf].all():
        return None
    is_newline = buf == ord("\n")
    is_sep = buf == ord(" ")
    is_delim = is_newline | is_sep
    if is_delim[0] or bool((is_delim[1:] & is_delim[:-1]).any()):
        return None  # an empty field or a blank line
    newlines = np.flatnonzero(is_newline)
    num_fields = len(layout.fields)
    seps_per_line = np.bincount(np.searchsorted(newlines, np.flatnonzero(is_sep)), minlength=newlines.size)
    if bool((seps_per_line != num_fields - 1).any()):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            values = np.fromstring(data.decode("ascii"), dtype=np.float64, sep=" ")  # (M * fields,)
    except (ValueError, DeprecationWarning):
        return None
    if values.size != newlines.size * num_fields:
        return None
    table = values.reshape(newlines.size, num_fields)  # (M, fields)
    out: dict[str, np.ndarray] = {}
    for index, name in enumerate(layout.fields):
        if name in layout.integer_fields:
            column = table[:, index]  # (M,)
            if column.size and (bool((column != np.floor(column)).any()) or column.max() >= _MAX_EXACT):
                return None
            out[name] = column.astype(np.int64)
    return out


def _parse_slow(
    chunk: bytes, layout: NumericLayout, path: str | os.PathLike[str], lines_before: int
) -> dict[str, np.ndarray]:
    """Line-by-line parse of a chunk; raises on the first malformed line."""
    columns = {name: array("q") for name in layout.integer_fields}
    num_fields = len(layout.fields)
    for offset, raw in enumerate(chunk.split(b"\n")):
        line = raw.strip()
        if not line:
            continue
        line_no = lines_before + offset + 1
        parts = line.split(layout.separator) if layout.separator is not None else line.split()
        if len(parts) != num_fields:
            sep = "whitespace" if layout.separator is None else repr(layout.separator.decode())
            raise DataFormatError(
                path,
                line_no,
                f"expected {num_fields} fields separated by {sep} ({layout.description}); "
                f"got {len(parts)} in {_show(line)}",
            )
        for name, text in zip(layout.fields, parts, strict=True):
            if name in layout.integer_fields:
                columns[name].append(_to_int(text, name, layout, path, line_no))
            else:
                _check_number(text, name, layout, path, line_no)
    return {name: np.frombuffer(values, dtype=np.int64).copy() for name, values in columns.items()}


def _to_int(text: bytes, name: str, layout: NumericLayout, path: str | os.PathLike[str], line_no: int) -> int:
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = float("nan")
        if not number.is_integer():
            raise DataFormatError(
                path,
                line_no,
                f"field {name!r} must be a non-negative integer ({layout.description}); got {_show(text)}",
            ) from None
        value = int(number)
    if value < 0 or value >= _MAX_EXACT:
        raise DataFormatError(
            path,
            line_no,
            f"field {name!r} must be an integer in [0, 2**53) ({layout.description}); got {value}",
        )
    return value


def _check_number(
    text: bytes, name: str, layout: NumericLayout, path: str | os.PathLike[str], line_no: int
) -> None:
    try:
        float(text)
    except ValueError:
        raise DataFormatError(
            path, line_no, f"field {name!r} must be a number ({layout.description}); got {_show(text)}"
        ) from None


def _show(raw: bytes) -> str:
    """A line or field for an error message: decoded leniently, at most 120 characters."""
    text = raw.decode("utf-8", errors="replace")
    return repr(text if len(text) <= 120 else text[:117] + "...")
