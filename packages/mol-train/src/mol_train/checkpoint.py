"""Checkpoints written atomically, verified on load, never overwritten in place.

A checkpoint is ``<dir>/step-<step>.pt`` (``torch.save`` of a state dict) with a sidecar
``step-<step>.pt.sha256``. Both are written to temporary names and renamed into place, the checkpoint last
being visible only once complete, so a crash mid-write leaves the previous checkpoint as the newest valid
one. Loading checks the digest; a corrupt file (or one whose digest file is missing) is reported with the
newest intact checkpoint to resume from, and :func:`newest_intact_checkpoint` finds that one and names the
newer ones it skipped. The newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from mol_core.atomic import write_bytes_atomically, write_text_atomically
from mol_core.errors import ArtifactError
from mol_core.manifest import sha256_file

__all__ = [
    "checkpoint_problem",
    "find_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "newest_intact_checkpoint",
    "save_checkpoint",
    "save_state",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d+)\.pt$")


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Writes ``state`` and a ``.sha256`` sidecar to ``path`` atomically (read by :func:`load_checkpoint`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(path.name + ".tmpdata")
    write_bytes_atomically(staged, lambda h: torch.save(state, h))
    try:
        digest = sha256_file(staged)
        write_text_atomically(path.with_name(path.name + ".sha256"), f"{digest}\n")
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Writes ``state`` as the checkpoint of ``step`` and prunes all but the newest ``keep``.

    Returns:
        The checkpoint's path.
    """
    folder = Path(directory)
    path = save_state(folder / f"step-{step:09d}.pt", state)
    for old in find_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    logger.info("saved checkpoint %s", path)
    return path


def find_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first (by step)."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be trusted (a phrase for a message), or ``None`` if intact."""
    path = Path(path)
    if not path.is_file():
        return "does not exist"
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return f"is unverifiable: its digest file {sidecar.name} is missing"
    if sidecar.read_text(errors="replace").strip() != sha256_file(path):
        return "is corrupt or incomplete (sha256 does not match)"
    return None


def newest_intact_checkpoint(directory: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint in ``directory`` and the newer ones skipped on the way.

    Returns:
        ``(path or None, [(skipped path, its problem), ...])``, the skipped ones newest first.
    """
    skipped: list[tuple[Path, str]] = []
    for path in reversed(find_checkpoints(directory)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint in ``directory`` (intact or not), or ``None``."""
    found = find_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint after verifying its digest.

    Raises:
        ArtifactError: the file or its digest file is missing (the message says which), the digest does not
            match, or it cannot be unpickled; the message names the newest intact checkpoint in the same
            folder, if any.
    """
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is not None:
        older = [p for p in find_checkpoints(path.parent) if p != path and checkpoint_problem(p) is None]
        hint = f"; the newest intact checkpoint is {older[-1]}: resume from it" if older else ""
        raise ArtifactError(f"checkpoint {path} {problem}{hint}")
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ArtifactError(f"checkpoint {path} cannot be read: {exc}") from exc
    return state
