"""Checkpoints: atomic, verified, pruned; a corrupt one names the intact one to resume from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mol_core.errors import ArtifactError
from mol_train.checkpoint import find_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint


def test_round_trip_and_pruning(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))}, keep=2)
    found = find_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step-000000020.pt", "step-000000030.pt"]
    assert latest_checkpoint(tmp_path) == found[-1]
    state = load_checkpoint(found[-1])
    assert state["step"] == 30
    assert torch.equal(state["w"], torch.full((3,), 30.0))
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.startswith("step-") or "tmp" in p.name]
    assert leftovers == []


def test_corrupt_checkpoint_names_the_previous_intact_one(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {"step": 1})
    newest = save_checkpoint(tmp_path, 2, {"step": 2})
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"step-000000002.pt is corrupt.*step-000000001.pt"):
        load_checkpoint(newest)
    assert load_checkpoint(tmp_path / "step-000000001.pt")["step"] == 1  # the previous one still loads


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_checkpoint(tmp_path / "step-000000001.pt")
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_failed_write_leaves_the_previous_checkpoint_newest(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {"step": 1})

    class Unpicklable:
        def __reduce__(self) -> str:
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, 2, {"bad": Unpicklable()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000001.pt", "step-000000001.pt.sha256"]
    assert load_checkpoint(latest_checkpoint(tmp_path) or tmp_path)["step"] == 1
