"""Wraps a model that holds :class:`EmbeddingTables` in torchrec's ``DistributedModelParallel``.

Three sharding kinds (:class:`ShardingKind`), chosen per model and applied to every table:

- ``ROW_WISE`` (default): each table's rows are split evenly across the ranks; ids travel to the rank
  that owns their rows and embeddings travel back (all-to-all). Memory per rank is ``1 / world_size`` of
  the table. Uses the fused fbgemm kernels (the CPU build on CPU).
- ``TABLE_WISE``: each table lives whole on one rank (item table on rank 0, user table on rank
  ``1 % world_size``). Also fused fbgemm kernels.
- ``DATA_PARALLEL``: the tables stay the plain ``nn.Embedding`` weights of the unsharded
  ``EmbeddingCollection``, replicated on every rank; DDP all-reduces their gradients with the dense ones
  and a regular (non-fused) optimizer steps them. No fbgemm kernel runs, so this works on a GPU machine
  that has no CUDA fbgemm build. (torchrec's own ``data_parallel()`` sharding of an
  ``EmbeddingCollection`` computes wrong output shapes with fbgemm-gpu-cpu 1.8, so it is not used.)

Table optimizer (:class:`TableOptimizer`): for ``ROW_WISE``/``TABLE_WISE`` it is fused into the
backward pass of the embedding lookup: the sharder gets fbgemm ``fused_params`` and the plan asks for the
``fused`` compute kernel, so the gradient of a table is never materialised and ``optimizer.step()`` does
nothing for it. fbgemm-gpu-cpu 1.8 supports exact row-wise Adagrad, Adagrad and SGD on CPU but not Adam
("Optimizer adam is not supported in CPU mode"); Adam is accepted on CUDA only. Dense parameters always
use ``torch.optim.AdamW``. Both sit behind one torchrec ``CombinedOptimizer``.

Gradient scaling: each rank's loss is a mean over its local batch. DDP averages dense gradients over
ranks, and torchrec divides the sharded tables' gradients by the world size in the backward all-to-all
(``torchrec.distributed.comm_ops`` gradient division, on by default), so N processes with a global batch
of G follow the same trajectory as one process with batch G, up to floating-point reassociation.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec import EmbeddingCollection
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.sharding_plan import (
    ParameterShardingGenerator,
    construct_module_sharding_plan,
    row_wise,
    table_wise,
)
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper

from mol_core._checks import check_positive_float
from mol_core.errors import ConfigError

__all__ = ["ShardedModel", "ShardingKind", "TableOptimizer", "make_sharding_plan", "shard_model"]

logger = logging.getLogger(__name__)


class ShardingKind(enum.Enum):
    """How the embedding tables are spread over the ranks (see the module docstring)."""

    ROW_WISE = "row_wise"
    TABLE_WISE = "table_wise"
    DATA_PARALLEL = "data_parallel"


class TableOptimizer(enum.Enum):
    """The optimizer of the embedding tables: fused into the backward pass unless data-parallel."""

    ROWWISE_ADAGRAD = "rowwise_adagrad"
    ADAGRAD = "adagrad"
    SGD = "sgd"
    ADAM = "adam"


#: fbgemm's fused optimizer and the equivalent regular optimizer (used for data-parallel tables).
_FUSED: dict[TableOptimizer, EmbOptimType] = {
    TableOptimizer.ROWWISE_ADAGRAD: EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    TableOptimizer.ADAGRAD: EmbOptimType.EXACT_ADAGRAD,
    TableOptimizer.SGD: EmbOptimType.EXACT_SGD,
    TableOptimizer.ADAM: EmbOptimType.ADAM,
}
_EPS = 1e-8


@dataclass(frozen=True)
class ShardedModel:
    """The outcome of :func:`shard_model`.

    Attributes:
        model: the ``DistributedModelParallel`` wrapper; call it like the original model. The original
            module (with sharded collections inside) is ``model.module``.
        optimizer: a ``CombinedOptimizer``: the fused table optimizer (stepped in backward; its
            ``step`` is a no-op) and AdamW over the dense parameters (plus the regular table optimizer
            when data-parallel). Call ``zero_grad()`` / ``step()`` once per training step.
        plan: the sharding plan applied (empty when data-parallel).
        env: the process group, rank and world size the model was sharded over.
    """

    model: DistributedModelParallel
    optimizer: CombinedOptimizer
    plan: ShardingPlan
    env: ShardingEnv

    def state_dict(self) -> dict[str, Any]:
        """``{"model": ..., "optimizer": ...}``: this rank's weights and optimizer state, for a checkpoint.

        Sharded tables appear as ``ShardedTensor`` values holding this rank's shards (with one process,
        the whole table), so a checkpoint is per rank: resume with the same world size and sharding.
        """
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict` into a freshly sharded model (same world size and sharding).

        torchrec's keyed optimizers only load into initialised state, so a regular optimizer that has
        not stepped yet is initialised first (a zero-gradient step, before the weights are loaded). That
        step gives every parameter a state; the parameters the saved run never stepped (no gradient ever
        reached them, e.g. HSTU's time bias on data without timestamps) have none in the checkpoint, and
        lose it again, so the optimizer is the saved one exactly.
        """
        saved = state["optimizer"]["state"]
        if len(saved) > len(self.optimizer.state):
            for _, sub in self.optimizer.optimizers:
                if isinstance(sub, KeyedOptimizerWrapper) and not sub.state:
                    sub.init_state()
            never_stepped = {id(param) for key, param in self.optimizer.params.items() if key not in saved}
            for _, sub in self.optimizer.optimizers:
                for param in [p for p in sub.state if id(p) in never_stepped]:
                    del sub.state[param]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def _collections(model: nn.Module) -> dict[str, EmbeddingCollection]:
    found = {
        name: module for name, module in model.named_modules() if isinstance(module, EmbeddingCollection)
    }
    if not found:
        raise ConfigError(
            "the model holds no torchrec EmbeddingCollection; put the tables in an EmbeddingTables module"
        )
    return found


def _sharder(
    table_optimizer: TableOptimizer, table_lr: float, table_weight_decay: float
) -> EmbeddingCollectionSharder:
    fused_params: dict[str, Any] = {
        "optimizer": _FUSED[table_optimizer],
        "learning_rate": table_lr,
        "eps": _EPS,
        "weight_decay": table_weight_decay,
    }
    return EmbeddingCollectionSharder(fused_params=fused_params)


def make_sharding_plan(
    model: nn.Module,
    *,
    world_size: int,
    sharding: ShardingKind = ShardingKind.ROW_WISE,
    device_type: str = "cpu",
    sharder: ModuleSharder[nn.Module] | None = None,
) -> ShardingPlan:
    """The explicit plan for every ``EmbeddingCollection`` inside ``model``.

    Built with ``construct_module_sharding_plan`` and ``row_wise()`` / ``table_wise(rank=...)`` with the
    fused compute kernel; needs no process group, so it can be inspected (``print(plan)``) up front.

    Args:
        model: a module holding one or more EmbeddingCollections (e.g. through :class:`EmbeddingTables`).
        world_size: number of ranks.
        sharding: ``ROW_WISE`` or ``TABLE_WISE`` (data-parallel needs no plan).
        device_type: ``"cpu"`` or ``"cuda"``.
        sharder: the sharder the plan is for (default: a plain ``EmbeddingCollectionSharder``).

    Returns:
        A ``ShardingPlan`` keyed by the collections' module paths.

    Raises:
        ConfigError: data-parallel sharding, a world size below 1, or a model without collections.
    """
    if sharding is ShardingKind.DATA_PARALLEL:
        raise ConfigError(
            "data-parallel tables need no sharding plan; call shard_model(sharding=...) directly"
        )
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be a positive integer; got {world_size!r}")
    sharder = sharder if sharder is not None else EmbeddingCollectionSharder()
    kernel = EmbeddingComputeKernel.FUSED.value
    plan: dict[str, Any] = {}
    for table_index, (path, collection) in enumerate(_collections(model).items()):
        per_table: dict[str, ParameterShardingGenerator] = {}
        for config in collection.embedding_configs():
            if sharding is ShardingKind.ROW_WISE:
                per_table[config.name] = row_wise(compute_kernel=kernel)
            else:  # collection i (item first, then user) goes whole to rank i mod world_size
                per_table[config.name] = table_wise(rank=table_index % world_size, compute_kernel=kernel)
        plan[path] = construct_module_sharding_plan(
            collection,
            per_table,
            sharder=sharder,
            local_size=world_size,
            world_size=world_size,
            device_type=device_type,
        )
    return ShardingPlan(plan)


def shard_model(
    model: nn.Module,
    *,
    device: torch.device,
    sharding: ShardingKind = ShardingKind.ROW_WISE,
    table_optimizer: TableOptimizer = TableOptimizer.ROWWISE_ADAGRAD,
    table_lr: float = 0.05,
    table_weight_decay: float = 0.0,
    dense_lr: float = 1e-3,
    dense_weight_decay: float = 0.0,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    process_group: dist.ProcessGroup | None = None,
) -> ShardedModel:
    """Shards ``model``'s embedding tables and wraps the rest in DDP, with the matching optimizers.

    Every rank calls this with an identically built (same seed) ``model``; each rank keeps its shards of
    the tables, copied from its own copy of the weights. Needs an initialised process group (see
    :func:`mol_train.distributed.init_distributed`; one process uses a one-rank gloo group).

    Args:
        model: the full model, holding :class:`EmbeddingTables` (or other EmbeddingCollections).
        device: this rank's device (``cpu`` with gloo, ``cuda:<local_rank>`` with nccl).
        sharding: see :class:`ShardingKind`.
        table_optimizer: see :class:`TableOptimizer`; ``ADAM`` needs CUDA unless data-parallel.
        table_lr: learning rate of the tables.
        table_weight_decay: weight decay of the tables (fbgemm's L2 mode for fused optimizers).
        dense_lr: AdamW learning rate of every other parameter.
        dense_weight_decay: AdamW weight decay.
        adam_betas: AdamW's ``(beta1, beta2)``, for the dense parameters and for data-parallel tables
            with ``TableOptimizer.ADAM`` (which then use AdamW: decoupled weight decay).
        process_group: defaults to the world group.

    Returns:
        The :class:`ShardedModel` (wrapped model, combined optimizer, plan, sharding env).

    Raises:
        ConfigError: no process group, an optimizer the device cannot fuse, or a bad learning rate.

    Example:
        ``sharded = shard_model(MyModel(tables), device=context.device, sharding=ShardingKind.ROW_WISE)``
        then per step: ``loss = sharded.model(batch); loss.backward(); sharded.optimizer.step();
        sharded.optimizer.zero_grad()``.
    """
    if not dist.is_initialized():
        raise ConfigError(
            "shard_model needs an initialised torch.distributed process group; call "
            "mol_train.distributed.init_distributed() first (one process gets a one-rank gloo group)"
        )
    table_lr = check_positive_float("table_lr", table_lr)
    dense_lr = check_positive_float("dense_lr", dense_lr)
    fused = sharding is not ShardingKind.DATA_PARALLEL
    if fused and table_optimizer is TableOptimizer.ADAM and device.type != "cuda":
        raise ConfigError(
            "fbgemm's fused Adam runs only on CUDA; on CPU use table_optimizer=ROWWISE_ADAGRAD, "
            "ADAGRAD or SGD, or sharding=DATA_PARALLEL"
        )
    group = process_group if process_group is not None else dist.group.WORLD
    if group is None:
        raise ConfigError("no process group to shard over; call init_distributed() first")
    env = ShardingEnv.from_process_group(group)
    table_params = {
        f"{path}.{name}"
        for path, collection in _collections(model).items()
        for name, _ in collection.named_parameters()
    }
    if sharding is ShardingKind.DATA_PARALLEL:
        plan = ShardingPlan({})
        wrapped = DistributedModelParallel(model, env=env, device=device, plan=plan, sharders=[])
    else:
        sharder = _sharder(table_optimizer, table_lr, table_weight_decay)
        plan = make_sharding_plan(
            model, world_size=env.world_size, sharding=sharding, device_type=device.type, sharder=sharder
        )
        wrapped = DistributedModelParallel(
            model,
            env=env,
            device=device,
            plan=plan,
            sharders=[sharder],
        )
    optimizers: list[KeyedOptimizer] = []
    fused_names = set(wrapped.fused_optimizer.params)
    if fused_names:
        optimizers.append(wrapped.fused_optimizer)
    # DMP names parameters as the original model does. A sharded table's parameter is in the fused
    # optimizer, or is a placeholder on a rank that holds no shard of it.
    named = {name: p for name, p in wrapped.named_parameters() if name not in fused_names}
    dense = {name: p for name, p in named.items() if name not in table_params}
    tables = {name: p for name, p in named.items() if name in table_params}
    if sharding is ShardingKind.DATA_PARALLEL and tables:  # a regular optimizer over the replicas
        optimizers.append(
            KeyedOptimizerWrapper(
                tables,
                lambda params: _regular_table_optimizer(
                    params, table_optimizer, table_lr, table_weight_decay, adam_betas
                ),
            )
        )
    if dense:
        optimizers.append(
            KeyedOptimizerWrapper(
                dense,
                lambda params: torch.optim.AdamW(
                    params, lr=dense_lr, betas=adam_betas, weight_decay=dense_weight_decay
                ),
            )
        )
    logger.info(
        "sharded %d table parameter(s) (%s, %s), %d dense parameter(s) with AdamW over %d rank(s)",
        len(table_params),
        sharding.value,
        table_optimizer.value,
        len(dense),
        env.world_size,
    )
    return ShardedModel(model=wrapped, optimizer=CombinedOptimizer(optimizers), plan=plan, env=env)


def _regular_table_optimizer(
    params: Any,
    table_optimizer: TableOptimizer,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    if table_optimizer is TableOptimizer.ROWWISE_ADAGRAD:
        rowwise: torch.optim.Optimizer = RowWiseAdagrad(params, lr=lr, eps=_EPS, weight_decay=weight_decay)
        return rowwise
    if table_optimizer is TableOptimizer.ADAGRAD:
        return torch.optim.Adagrad(params, lr=lr, eps=_EPS, weight_decay=weight_decay)
    if table_optimizer is TableOptimizer.SGD:
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=_EPS, weight_decay=weight_decay)
