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


def _resharded(saved: Any, live: Any, where: str = "") -> Any:
    """``saved`` with each stored shard list copied into the matching ShardedTensor of ``live``."""
    if isinstance(saved, dict) and _SHARDS in saved:
        if not isinstance(live, ShardedTensor):
            raise ArtifactError(f"checkpoint entry {where} holds table shards but the model has none there")
        shards = {tuple(s.metadata.shard_offsets): s.tensor for s in live.local_shards()}
        for offsets, tensor in saved[_SHARDS]:
            if tuple(offsets) not in shards or shards[tuple(offsets)].shape != tensor.shape:
                raise ArtifactError(
                    f"checkpoint entry {where}: a shard at offsets {offsets} of shape {tuple(tensor.shape)} "
                    "does not match this run's sharding; resume with the same processes and sharding"
                )
            shards[tuple(offsets)].copy_(tensor)
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


def choose_resume_checkpoint(checkpoints: Path, context: DistributedContext) -> int:
    """The newest epoch whose checkpoint is intact on every rank (a collective with several ranks).

    Newer checkpoints that are corrupt, incomplete or missing on some rank are skipped with a warning
    that names each one and what is wrong with it.

    Raises:
        ConfigError: no checkpoint at all.
        ArtifactError: checkpoints exist but none is intact on every rank (the message lists them).
    """
    folder = rank_checkpoint_dir(checkpoints, context.rank)
    mine = {int(path.name[5:-3]): (path, checkpoint_problem(path)) for path in find_checkpoints(folder)}
    views: list[dict[int, tuple[Path, str | None]]] = [mine]
    if context.world_size > 1:
        gathered: list[Any] = [None] * context.world_size
        dist.all_gather_object(gathered, mine)
        views = gathered
    steps = sorted(set().union(*views), reverse=True)
    if not steps:
        raise ConfigError(f"resume was asked for but {checkpoints} holds no checkpoint")
    skipped: list[str] = []
    for step in steps:
        problems = [
            f"rank {rank}: {view[step][0]} {view[step][1]}"
            if step in view
            else f"rank {rank}: no checkpoint of epoch {step}"
            for rank, view in enumerate(views)
            if step not in view or view[step][1] is not None
        ]
        if not problems:
            if skipped:
                logger.warning(
                    "resuming from epoch %d; skipped newer checkpoint(s): %s", step, "; ".join(skipped)
                )
            return step
        skipped.extend(problems)
    raise ArtifactError(f"no intact checkpoint to resume from in {checkpoints}: " + "; ".join(skipped))


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
