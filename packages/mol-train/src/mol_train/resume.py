"""What a checkpoint holds besides the weights so that a resumed run equals the uninterrupted one.

A run's checkpoint after epoch ``e`` (written by :func:`mol_train.train.fit` with
:func:`mol_train.checkpoint.save_checkpoint`) is a dict:

- ``weights``: the query encoder's state (rank 0 only; what ``best.pt``, ``eval --weights`` and exports use),
- ``state``: the progress counters (epoch, optimizer steps, best epoch and NDCG@10, stale evaluations,
  training seconds and sequences so far),
- ``config``: the run's configuration as JSON-ready values, and ``world_size``,
- ``training``: :func:`training_state`: every weight and the optimizer state of this rank
  (:meth:`~mol_train.distributed.ShardedModel.state_dict`) and every random generator the run draws from.
  A sharded table's ``ShardedTensor`` is stored as plain tensors (its local shards with their offsets), so a
  checkpoint loads without a process group (``mol-train eval --weights``); resuming copies them back into
  the freshly sharded model's shards.

The data order needs no state: epoch ``e``'s order is a function of ``(seed, e)``
(:func:`mol_train.data.iter_train_batches`); there is no learning-rate scheduler. Rank 0 writes
``checkpoints/step-<epoch>.pt``, rank ``r > 0`` writes ``checkpoints/rank-<r>/step-<epoch>.pt``.

A checkpoint written by ``W`` processes resumes with any number ``W'``. With ``W' = W`` each rank reads its
own file. Otherwise every rank reads all ``W`` files (so they must be on a file system every rank sees),
:func:`merge_rank_states` joins each table's shards from all of them, and :func:`restore_training_state`
copies into each of this run's shards the parts of the saved shards that overlap it (any sharding of the
same table: row-wise into more or fewer ranks, row-wise into table-wise). Replicated values (dense
weights, AdamW state, generators) are rank 0's: every rank holds the same ones.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor.api import ShardedTensor

from mol_core.errors import ArtifactError, ConfigError
from mol_train.checkpoint import checkpoint_problem, find_checkpoints
from mol_train.distributed import DistributedContext, ShardedModel

__all__ = [
    "RESUMABLE_CHANGES",
    "check_resumable_config",
    "choose_resume_checkpoint",
    "fill_from_pieces",
    "merge_rank_states",
    "rank_checkpoint_dir",
    "restore_training_state",
    "training_state",
]

logger = logging.getLogger(__name__)

#: Settings a resumed run may change: when the run stops, and where the (same) prepared data now lies.
RESUMABLE_CHANGES = frozenset(
    {"train.epochs", "train.early_stopping_patience", "train.time_budget_seconds", "data.path"}
)


def rank_checkpoint_dir(checkpoints: Path, rank: int) -> Path:
    """The folder holding ``rank``'s checkpoints: ``checkpoints`` itself for rank 0."""
    return checkpoints if rank == 0 else checkpoints / f"rank-{rank}"


_SHARDS = "__local_shards__"


def _plain(value: Any) -> Any:
    """``value`` with every ShardedTensor replaced by ``{_SHARDS: [(offsets, tensor), ...]}`` (copies)."""
    if isinstance(value, ShardedTensor):
        return {_SHARDS: [(list(s.metadata.shard_offsets), s.tensor.clone()) for s in value.local_shards()]}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def fill_from_pieces(
    target: torch.Tensor, offsets: list[int], pieces: list[tuple[list[int], torch.Tensor]]
) -> int:
    """Copies into ``target`` (the block of a table that starts at ``offsets``) every overlapping part of
    ``pieces`` (blocks of the same table, each ``(its offsets, its tensor)``); returns how many elements of
    ``target`` were written.

    Shape symbols: any number of dimensions; ``target`` and every piece have as many as ``offsets``.
    """
    written = 0
    for piece_offsets, piece in pieces:
        starts = [max(o, p) for o, p in zip(offsets, piece_offsets, strict=True)]
        ends = [
            min(o + size, p + piece_size)
            for o, size, p, piece_size in zip(offsets, target.shape, piece_offsets, piece.shape, strict=True)
        ]
        if any(end <= start for start, end in zip(starts, ends, strict=True)):
            continue
        into = tuple(slice(a - o, b - o) for a, b, o in zip(starts, ends, offsets, strict=True))
        source = tuple(slice(a - p, b - p) for a, b, p in zip(starts, ends, piece_offsets, strict=True))
        target[into].copy_(piece[source])
        written += int(target[into].numel())
    return written


def _resharded(saved: Any, live: Any, where: str = "") -> Any:
    """``saved`` with each stored shard list copied, by overlap, into the matching ShardedTensor of ``live``.

    Raises:
        ArtifactError: a stored table where the model has none, or a shard of this run that the stored
            shards do not cover (another table size).
    """
    if isinstance(saved, dict) and _SHARDS in saved:
        if not isinstance(live, ShardedTensor):
            raise ArtifactError(f"checkpoint entry {where} holds table shards but the model has none there")
        pieces = [(list(offsets), tensor) for offsets, tensor in saved[_SHARDS]]
        for shard in live.local_shards():
            offsets = list(shard.metadata.shard_offsets)
            exact = [t for o, t in pieces if o == offsets and t.shape == shard.tensor.shape]
            if exact:  # the same sharding: one piece
                shard.tensor.copy_(exact[0])
                continue
            if fill_from_pieces(shard.tensor, offsets, pieces) != shard.tensor.numel():
                raise ArtifactError(
                    f"checkpoint entry {where}: the stored shards do not cover this run's shard at offsets "
                    f"{offsets} of shape {tuple(shard.tensor.shape)}; was the table's size changed?"
                )
        return live
    if isinstance(saved, dict):
        inner = live if isinstance(live, dict) else {}
        return {key: _resharded(item, inner.get(key), f"{where}/{key}") for key, item in saved.items()}
    if isinstance(saved, (list, tuple)):
        same = isinstance(live, (list, tuple)) and len(live) == len(saved)
        return type(saved)(
            _resharded(item, live[i] if same else None, f"{where}/{i}") for i, item in enumerate(saved)
        )
    return saved


def merge_rank_states(states: list[Any]) -> Any:
    """One training state from every rank's (rank 0 first): each table's stored shards are the union of
    all ranks' shards; every other value is rank 0's (replicated on every rank)."""
    first = states[0]
    if isinstance(first, dict) and _SHARDS in first:
        return {_SHARDS: [piece for state in states for piece in state[_SHARDS]]}
    if isinstance(first, dict):
        return {
            key: merge_rank_states(
                [state[key] if isinstance(state, dict) and key in state else value for state in states]
            )
            for key, value in first.items()
        }
    if isinstance(first, (list, tuple)) and all(
        isinstance(state, (list, tuple)) and len(state) == len(first) for state in states
    ):
        return type(first)(merge_rank_states([state[i] for state in states]) for i in range(len(first)))
    return first


def training_state(sharded: ShardedModel, sampler: torch.Generator) -> dict[str, Any]:
    """This rank's weights, optimizer state and random generators (the negative ``sampler`` among them)."""
    return {
        "sharded": _plain(sharded.state_dict()),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "sampler": sampler.get_state(),
        },
    }


def restore_training_state(saved: dict[str, Any], sharded: ShardedModel, sampler: torch.Generator) -> None:
    """Loads :func:`training_state` into a freshly sharded model and sets every generator as saved.

    Raises:
        ArtifactError: the saved table shards do not fit this run's sharding.
    """
    sharded.load_state_dict(_resharded(saved["sharded"], sharded.state_dict()))
    rng = saved["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    sampler.set_state(rng["sampler"])


def choose_resume_checkpoint(checkpoints: Path, context: DistributedContext) -> tuple[int, int]:
    """The newest epoch whose checkpoint can be resumed by every rank of this run, and the number of
    processes that wrote it (a collective with several ranks).

    Rank 0 lists its intact checkpoints and the process count recorded in each. An epoch written by as
    many processes as this run has needs each rank's own file intact; one written by another number
    needs every writer's file intact and readable by every rank. Newer checkpoints that fail are skipped
    with a warning that names each file and what is wrong with it.

    Returns:
        ``(epoch, processes that wrote it)``.

    Raises:
        ConfigError: no checkpoint at all.
        ArtifactError: checkpoints exist but none can be resumed (the message lists why).
    """
    folder = rank_checkpoint_dir(checkpoints, context.rank)
    mine = {int(path.name[5:-3]): (path, checkpoint_problem(path)) for path in find_checkpoints(folder)}
    # rank 0's view: whether it has checkpoints, its intact ones (epoch, writers) and its broken ones
    listing: dict[str, Any] = {"any": bool(mine), "candidates": [], "broken": []}
    if context.is_main:
        for step in sorted(mine, reverse=True):
            path, problem = mine[step]
            if problem is None:
                listing["candidates"].append((step, _written_by(path, context.world_size)))
            else:
                listing["broken"].append((step, f"rank 0: {path} {problem}"))
    if context.world_size > 1:
        box: list[Any] = [listing]
        dist.broadcast_object_list(box, src=0)
        listing = box[0]
    if not listing["any"]:
        raise ConfigError(f"resume was asked for but {checkpoints} holds no checkpoint")
    candidates: list[tuple[int, int]] = listing["candidates"]
    objections = [_objections(checkpoints, context, mine, step, writers) for step, writers in candidates]
    views: list[Any] = [objections]
    if context.world_size > 1:
        views = [None] * context.world_size
        dist.all_gather_object(views, objections)
    skipped: list[tuple[int, str]] = list(listing["broken"])
    for number, (step, writers) in enumerate(candidates):
        problems = [problem for view in views for problem in view[number]]
        if not problems:
            newer = [text for other, text in sorted(skipped, reverse=True) if other > step]
            if newer:
                message = "resuming from epoch %d; skipped newer checkpoint(s): %s"
                logger.warning(message, step, "; ".join(newer))
            return step, writers
        skipped.extend((step, problem) for problem in problems)
    listed = "; ".join(text for _, text in sorted(skipped, reverse=True))
    raise ArtifactError(f"no intact checkpoint to resume from in {checkpoints}: {listed}")


def _objections(
    checkpoints: Path,
    context: DistributedContext,
    mine: dict[int, tuple[Path, str | None]],
    step: int,
    writers: int,
) -> list[str]:
    """What keeps this rank from resuming epoch ``step`` written by ``writers`` processes ([] = nothing)."""
    if writers == context.world_size:  # each rank reads its own file
        path, problem = mine.get(
            step, (rank_checkpoint_dir(checkpoints, context.rank) / f"step-{step:09d}.pt", "does not exist")
        )
        return [f"rank {context.rank}: {path} {problem}"] if problem else []
    files = [rank_checkpoint_dir(checkpoints, r) / f"step-{step:09d}.pt" for r in range(writers)]
    return [
        f"rank {context.rank} (reading the checkpoint of {writers} process(es)): {file} {problem}"
        for file in files
        if (problem := checkpoint_problem(file)) is not None
    ]


def _written_by(path: Path, default: int) -> int:
    """The process count recorded in the checkpoint at ``path`` (tensors memory-mapped, not read)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:
        raise ArtifactError(f"checkpoint {path} cannot be read: {err}") from err
    return int(state.get("world_size", default)) if isinstance(state, dict) else default


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable_config(saved: dict[str, Any], current: dict[str, Any], *, checkpoint: Path) -> None:
    """Refuses to resume under a configuration that changes what a step computes.

    Args:
        saved: the checkpoint's ``config`` (JSON-ready values).
        current: this run's configuration, the same way.
        checkpoint: named in the message.

    Raises:
        ConfigError: a setting other than :data:`RESUMABLE_CHANGES` differs; the message names each one with
            both values.
    """
    before, now = _flatten(saved), _flatten(current)
    keys = (before.keys() | now.keys()) - RESUMABLE_CHANGES
    changed = sorted(k for k in keys if before.get(k) != now.get(k))
    if changed:
        listed = ", ".join(f"{k} (checkpoint {before.get(k)!r}, now {now.get(k)!r})" for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise ConfigError(
            f"cannot resume from {checkpoint}: the configuration changed: {listed}{more}; only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change on resume (start a new run for the rest)"
        )
