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


def test_replace_directory_swaps_a_folder_in_and_leaves_nothing_behind(tmp_path: Path) -> None:
    from mol_core.atomic import replace_directory

    def folder(name: str, content: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "file.txt").write_text(content)
        return path

    target = tmp_path / "target"
    assert replace_directory(folder("stage1", "first"), target) == target  # no target yet
    assert (target / "file.txt").read_text() == "first"
    replace_directory(folder("stage2", "second"), target)  # an existing target is replaced
    assert (target / "file.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no staging or old folder left


def test_replace_directory_puts_the_old_folder_back_when_the_swap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from mol_core import atomic

    target, staging = tmp_path / "target", tmp_path / "staging"
    for path, content in ((target, "old"), (staging, "new")):
        path.mkdir()
        (path / "file.txt").write_text(content)
    real_rename = os.rename

    def rename(src: object, dst: object) -> None:
        if Path(str(src)) == staging:
            raise OSError("disk full")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        atomic.replace_directory(staging, target)
    assert (target / "file.txt").read_text() == "old"
    assert (staging / "file.txt").read_text() == "new"  # the caller removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staging", "target"]
