"""The sparse part of a recommender: the item table and an optional hashed user-id table.

Both are torchrec :class:`~torchrec.EmbeddingCollection` modules fed by KeyedJaggedTensors (see
:mod:`mol_train.distributed.features`). This module is the simple, unsharded form; it runs on any device
with plain ``nn.Embedding`` weights. :func:`mol_train.distributed.shard_model` swaps each collection for
its sharded twin (``ShardedEmbeddingCollection``) inside ``DistributedModelParallel``; the methods below
keep working after that because they only ever call ``self.item_collection`` / ``self.user_collection``.

One call of :meth:`EmbeddingTables.forward` is one lookup per table. With a fused (in-backward)
optimizer each lookup's backward is one optimizer step, so a training step should look everything up in
one ``forward`` call (histories and candidates together) rather than calling the single-purpose helpers
one after the other. In a multi-process run every rank must make the same sequence of lookups (they are
collective operations), as with any DistributedModelParallel module.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig

from mol_core._checks import check_positive_float, check_positive_int
from mol_core.errors import ShapeError
from mol_train.distributed.features import ITEM_FEATURE, USER_FEATURE, ItemFeatures, UserFeatures

__all__ = ["ITEM_TABLE", "USER_TABLE", "EmbeddingTables", "TableLookup"]

#: Table names inside the collections (and in the sharding plan).
ITEM_TABLE = "item_table"
USER_TABLE = "user_table"


class TableLookup(NamedTuple):
    """The embeddings of one :meth:`EmbeddingTables.forward` call.

    Attributes:
        sequence: ``(B, L, D)`` history embeddings, zeros at padding.
        candidates: ``(M, R, D)`` candidate embeddings, or ``None``.
        users: ``(B, Du)`` user embeddings, or ``None``.
    """

    sequence: torch.Tensor
    candidates: torch.Tensor | None
    users: torch.Tensor | None


class EmbeddingTables(nn.Module):
    """Item table (``N + 1`` rows, row 0 = padding, width D) and optional user table (width Du).

    Args:
        num_items: N, item ids are ``1 .. N`` (0 is padding).
        item_dim: D.
        num_user_buckets: rows of the hashed user-id table; ``None`` (default) for no user table. User
            ids map to rows by ``user_id % num_user_buckets``.
        user_dim: Du (default D). torchrec requires one width per EmbeddingCollection, so the user table
            lives in a second collection.
        init_std: standard deviation of the normal initialisation of both tables.
        device: where to allocate the tables; ``torch.device("meta")`` defers allocation to sharding.

    Storage width: fbgemm's fused kernels (row-wise and table-wise sharding) need a table width that is
    a multiple of 4, so each table is stored ``ceil(width / 4) * 4`` wide (``item_storage_dim``,
    ``user_storage_dim``; D = 50 of the paper's ML-1M preset is stored 52 wide) and every lookup returns
    the first D (or Du) columns. The extra columns get no gradient and never reach the output. With
    row-wise Adagrad they enter the mean squared gradient of a row as zeros, which scales the effective
    learning rate by ``sqrt(storage_dim / D)`` (1.02 for 50 -> 52); widths that are multiples of 4 are
    stored as they are.

    Example:
        >>> tables = EmbeddingTables(num_items=100, item_dim=8, num_user_buckets=10, user_dim=4)
        >>> out = tables(torch.tensor([[0, 5, 7]]), torch.tensor([[1, 2]]), torch.tensor([42]))
        >>> tuple(out.sequence.shape), tuple(out.candidates.shape), tuple(out.users.shape)
        ((1, 3, 8), (1, 2, 8), (1, 4))
    """

    def __init__(
        self,
        num_items: int,
        item_dim: int,
        *,
        num_user_buckets: int | None = None,
        user_dim: int | None = None,
        init_std: float = 0.02,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_items", num_items)
        check_positive_int("item_dim", item_dim)
        check_positive_float("init_std", init_std)
        device = device if device is not None else torch.device("cpu")
        init_fn = partial(nn.init.normal_, mean=0.0, std=init_std)
        self.num_items = num_items
        self.item_dim = item_dim
        self.item_storage_dim = _round_up_to_4(item_dim)
        self.item_collection = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=ITEM_TABLE,
                    embedding_dim=self.item_storage_dim,
                    num_embeddings=num_items + 1,
                    feature_names=[ITEM_FEATURE],
                    init_fn=init_fn,
                )
            ],
            device=device,
        )
        self.num_user_buckets = num_user_buckets
        self.user_dim = 0
        self.user_storage_dim = 0
        self.user_collection: EmbeddingCollection | None = None
        if num_user_buckets is not None:
            check_positive_int("num_user_buckets", num_user_buckets)
            self.user_dim = check_positive_int("user_dim", user_dim if user_dim is not None else item_dim)
            self.user_storage_dim = _round_up_to_4(self.user_dim)
            self.user_collection = EmbeddingCollection(
                tables=[
                    EmbeddingConfig(
                        name=USER_TABLE,
                        embedding_dim=self.user_storage_dim,
                        num_embeddings=num_user_buckets,
                        feature_names=[USER_FEATURE],
                        init_fn=init_fn,
                    )
                ],
                device=device,
            )
        elif user_dim is not None:
            raise ShapeError("user_dim is set but num_user_buckets is None; give both or neither")

    def forward(
        self,
        sequence_ids: torch.Tensor,
        candidate_ids: torch.Tensor | None = None,
        user_ids: torch.Tensor | None = None,
    ) -> TableLookup:
        """Looks up histories and candidates in one item-table call, and users in the user table.

        Args:
            sequence_ids: ``(B, L)`` item ids in ``[0, N]``, 0 = padding.
            candidate_ids: ``(M, R)`` item ids in ``[1, N]``, or ``None``.
            user_ids: ``(B,)`` non-negative user ids, or ``None``; needs a user table.

        Returns:
            ``TableLookup(sequence (B, L, D), candidates (M, R, D) | None, users (B, Du) | None)``.

        Raises:
            ShapeError: a tensor has the wrong shape or dtype, or ``user_ids`` without a user table.
            ValueError: an item id is outside ``[0, N]`` (candidates: ``[1, N]``), or a user id is < 0.
        """
        features = ItemFeatures.from_padded(sequence_ids, candidate_ids, num_items=self.num_items)
        values = self.item_collection(features.kjt)[ITEM_FEATURE].values()[:, : self.item_dim]  # (T, D)
        sequence, candidates = features.unpack(values)  # (B, L, D), (M, R, D) | None
        users = None if user_ids is None else self.lookup_users(user_ids)  # (B, Du)
        return TableLookup(sequence, candidates, users)

    def lookup_items(self, item_ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` padded item ids -> ``(B, L, D)`` embeddings, zeros at padding (id 0)."""
        return self.forward(item_ids).sequence

    def lookup_candidates(self, candidate_ids: torch.Tensor) -> torch.Tensor:
        """``(M, R)`` item ids in ``[1, N]`` (sampled negatives, positives) -> ``(M, R, D)`` embeddings."""
        features = ItemFeatures.from_candidates(candidate_ids, num_items=self.num_items)
        values = self.item_collection(features.kjt)[ITEM_FEATURE].values()[:, : self.item_dim]  # (M * R, D)
        candidates = features.unpack(values)[1]
        if candidates is None:  # from_candidates always sets candidate_shape
            raise RuntimeError("internal error: candidate features without a candidate shape")
        return candidates  # (M, R, D)

    def lookup_users(self, user_ids: torch.Tensor) -> torch.Tensor:
        """``(B,)`` non-negative user ids -> ``(B, Du)`` embeddings of their hashed rows.

        Raises:
            ShapeError: the model has no user table, or ``user_ids`` is not ``(B,)`` integer.
        """
        if self.user_collection is None or self.num_user_buckets is None:
            raise ShapeError(
                "this model has no user table; build it with num_user_buckets=... to use user ids"
            )
        features = UserFeatures.from_user_ids(user_ids, num_buckets=self.num_user_buckets)
        users: torch.Tensor = self.user_collection(features.kjt)[USER_FEATURE].values()  # (B, Du storage)
        return users[:, : self.user_dim]  # (B, Du)

    @torch.no_grad()
    def all_item_embeddings(
        self, *, chunk_size: int = 65536, device: torch.device | None = None
    ) -> torch.Tensor:
        """Every item's embedding, rows ``1 .. N`` of the item table, for evaluation and export.

        Goes through the (possibly sharded) collection, so under row-wise sharding every rank receives
        the whole ``(N, D)`` matrix; every rank must call it (it is collective). No gradient is recorded,
        so no fused optimizer step follows.

        Args:
            chunk_size: ids per lookup, bounding the size of one all-to-all.
            device: where the ids (and the result) live; default: the device of the table (or of
                this rank's shard; with nccl and no local shard, the current CUDA device).

        Returns:
            ``(N, D)`` float tensor; row ``i`` is item id ``i + 1``.
        """
        check_positive_int("chunk_size", chunk_size)
        device = device if device is not None else self._table_device()
        parts = []
        for start in range(1, self.num_items + 1, chunk_size):
            stop = min(start + chunk_size, self.num_items + 1)
            ids = torch.arange(start, stop, device=device).unsqueeze(0)  # (1, n)
            parts.append(self.lookup_candidates(ids)[0])  # (n, D)
        return torch.cat(parts)  # (N, D)

    def item_table_weight(self) -> torch.Tensor:
        """The unsharded item table's ``(N + 1, D)`` weight (row 0 = padding), without storage columns.

        A view: ``tables.item_table_weight()[1:].copy_(weights)`` (under ``torch.no_grad()``) loads
        weights into the table.

        Raises:
            RuntimeError: the collection has been sharded; use :meth:`all_item_embeddings` instead.
        """
        embeddings = getattr(self.item_collection, "embeddings", None)
        table = embeddings[ITEM_TABLE] if isinstance(embeddings, nn.ModuleDict) else None
        if not isinstance(table, nn.Embedding):
            raise RuntimeError("the item table is sharded; read it with all_item_embeddings()")
        return table.weight[:, : self.item_dim]  # (N + 1, D)

    def user_table_weight(self) -> torch.Tensor:
        """The unsharded user table's ``(num_user_buckets, Du)`` weight, without storage columns.

        Raises:
            ShapeError: the model has no user table.
            RuntimeError: the collection has been sharded; use :meth:`lookup_users` on the bucket ids.
        """
        if self.user_collection is None:
            raise ShapeError("this model has no user table; build it with num_user_buckets=...")
        embeddings = getattr(self.user_collection, "embeddings", None)
        table = embeddings[USER_TABLE] if isinstance(embeddings, nn.ModuleDict) else None
        if not isinstance(table, nn.Embedding):
            raise RuntimeError("the user table is sharded; look its rows up with lookup_users()")
        return table.weight[:, : self.user_dim]  # (num_user_buckets, Du)

    def _table_device(self) -> torch.device:
        for tensor in self.item_collection.state_dict().values():
            local = getattr(tensor, "local_shards", None)
            if local is not None:  # ShardedTensor
                shards = local()
                if shards:
                    return torch.device(shards[0].tensor.device)
                continue
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                return tensor.device
        if dist.is_initialized() and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _round_up_to_4(width: int) -> int:
    return (width + 3) // 4 * 4
