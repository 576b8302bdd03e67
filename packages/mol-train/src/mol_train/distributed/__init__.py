"""TorchRec embedding tables and their distributed (DistributedModelParallel) training.

- :class:`EmbeddingTables`: the item table (N + 1 rows, row 0 = padding) and an optional hashed user
  table, as torchrec ``EmbeddingCollection`` modules fed by ``KeyedJaggedTensor`` (built by
  :class:`ItemFeatures` / :class:`UserFeatures`).
- :func:`init_distributed`: the process group from torchrun's environment (gloo on CPU, nccl on CUDA),
  or a one-rank gloo group for a single process; :func:`destroy_distributed` leaves it and stops its
  threads (:func:`process_group_threads` lists any still running).
- :func:`shard_model`: ``DistributedModelParallel`` with an explicit plan (:func:`make_sharding_plan`:
  row-wise or table-wise; or data-parallel tables), a fused optimizer for the tables and AdamW for the
  dense parameters.
- :func:`all_reduce_metrics`: ranking metrics summed over the ranks.

This subpackage imports torchrec; nothing outside mol-train does. See docs/mol-train-distributed.md.
"""

from mol_train.distributed.features import (
    ITEM_FEATURE,
    USER_FEATURE,
    ItemFeatures,
    UserFeatures,
    hash_user_ids,
)
from mol_train.distributed.metrics import all_reduce_metrics
from mol_train.distributed.process_group import (
    DistributedContext,
    destroy_distributed,
    init_distributed,
    process_group_threads,
)
from mol_train.distributed.sharding import (
    ShardedModel,
    ShardingKind,
    TableOptimizer,
    make_sharding_plan,
    shard_model,
)
from mol_train.distributed.tables import ITEM_TABLE, USER_TABLE, EmbeddingTables, TableLookup

__all__ = [
    "ITEM_FEATURE",
    "ITEM_TABLE",
    "USER_FEATURE",
    "USER_TABLE",
    "DistributedContext",
    "EmbeddingTables",
    "ItemFeatures",
    "ShardedModel",
    "ShardingKind",
    "TableLookup",
    "TableOptimizer",
    "UserFeatures",
    "all_reduce_metrics",
    "destroy_distributed",
    "hash_user_ids",
    "init_distributed",
    "make_sharding_plan",
    "process_group_threads",
    "shard_model",
]
