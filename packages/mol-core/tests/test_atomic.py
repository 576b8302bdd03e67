"""The atomic-write helper: new content replaces the old whole, an error leaves the old and no litter."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mol_core.atomic import atomic_open, write_bytes_atomically, write_text_atomically


def test_new_content_replaces_the_old(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_text_atomically(target, "old\n")
    write_text_atomically(target, "new\n")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_bytes_atomically(target, lambda handle: handle.write(b"\x00\x01"))
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_an_error_midway_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"complete")

    def fail(handle: object) -> None:
        handle.write(b"half")  # type: ignore[attr-defined]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_bytes_atomically(target, fail)

    def interrupted() -> None:
        with atomic_open(target) as handle:
            handle.write(b"half")
            raise KeyError("interrupted")

    with pytest.raises(KeyError):
        interrupted()
    assert target.read_bytes() == b"complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
