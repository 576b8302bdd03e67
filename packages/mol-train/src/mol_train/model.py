"""The sequential retrieval model: embedding tables, a sequence encoder and a similarity head.

Training is autoregressive: every position of a user's history is a query whose positive is the next item,
scored against ``R`` uniformly sampled negatives (drawn per position, per sequence or for the whole batch,
mol_train.negatives; accidental hits masked) or against the batch's other positives (in-batch with logQ
correction). :meth:`SequentialRecommender.forward` returns
the loss so that the whole model can sit inside torchrec's ``DistributedModelParallel``; evaluation and
export use :meth:`SequentialRecommender.query_side` and :meth:`SequentialRecommender.corpus_side`.

An optional index layer (``[index]`` in the config; mol_index.layers) is trained with the model: once
warm-started (:meth:`SequentialRecommender.warm_start_index`) the positives and negatives are scored
through it (PQ: quantized with a straight-through gradient) and its own loss is added with
``index.weight``. Evaluation (mol_train.evaluate) scores the items through the warm layer too: for PQ, the
quantized items its index serves; the Poeem benchmark (benchmarks/bench_mol_train_poeem.py) compares that
index with FAISS indexes built after training.

Shape symbols: B sequences, L positions, D item width, M = valid positions in a batch, R negatives,
N items, Pq/Px components, P = Pq * Px.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from mol_core.errors import ConfigError, ShapeError
from mol_core.losses import in_batch_softmax_loss, mutual_information_loss, sampled_softmax_loss
from mol_core.similarity import DotProductSimilarity, ItemSide, MoLSimilarity, QuerySide, Similarity
from mol_train.config import EncoderKind, LossKind, NegativeSampling, SimilarityKind, TrainConfig
from mol_train.distributed.tables import EmbeddingTables
from mol_train.models import HSTUEncoder, SASRecEncoder
from mol_train.negatives import lookup_ids, negative_ids_per_position, score_negatives

__all__ = [
    "LossParts",
    "QueryEncoder",
    "SequentialRecommender",
    "build_encoder",
    "build_index_layer",
    "build_model",
    "build_similarity",
]


class LossParts(NamedTuple):
    """The training loss and its parts, all scalars.

    Attributes:
        loss: what is minimised: ``softmax + mi_weight * mutual_information + index_weight *
            index_loss``.
        softmax: the sampled or in-batch softmax loss.
        mutual_information: the MI load-balancing loss (0 for similarities without gating).
        positions: M, the number of (query, positive) pairs in the batch, as a float tensor.
        index_loss: the index layer's own loss (0 without a layer or before its warm start).
        user_l2: the mean squared norm of the user-id embeddings over the M positions (0 without them).
    """

    loss: torch.Tensor
    softmax: torch.Tensor
    mutual_information: torch.Tensor
    positions: torch.Tensor
    index_loss: torch.Tensor
    user_l2: torch.Tensor


class SequentialRecommender(nn.Module):
    """Item (and user) tables -> sequence encoder -> similarity head.

    Args:
        tables: the torchrec embedding tables (item ids ``1..N``, 0 = padding).
        encoder: maps ``(B, L, D)`` embeddings and a ``(B, L)`` validity mask to ``(B, L, D)``.
        similarity: a mol-core similarity whose query input width and item input width are D.
        mi_weight: weight of the MI load-balancing loss.
        loss: sampled softmax or in-batch softmax.
        item_log_q: ``(N + 1,)`` log sampling probability of each item, for the in-batch logQ correction.
        index_layer: a jointly trained index layer (mol_index.layers), or ``None``.
        index_weight: weight of the index layer's loss.
        negative_sampling: who shares the sampled negatives (the shape ``forward`` expects).
        user_l2_weight: weight of the user embeddings' mean squared norm in the loss.
    """

    item_log_q: torch.Tensor | None

    def __init__(
        self,
        *,
        tables: EmbeddingTables,
        encoder: nn.Module,
        similarity: Similarity,
        mi_weight: float = 0.0,
        loss: LossKind = LossKind.SAMPLED,
        item_log_q: torch.Tensor | None = None,
        index_layer: nn.Module | None = None,
        index_weight: float = 1.0,
        negative_sampling: NegativeSampling = NegativeSampling.PER_SEQUENCE,
        user_l2_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.tables = tables
        self.encoder = encoder
        self.similarity = similarity
        self.mi_weight = mi_weight
        self.loss_kind = loss
        self.register_buffer("item_log_q", item_log_q, persistent=False)
        self.index_layer = index_layer
        self.index_weight = index_weight
        self.negative_sampling = negative_sampling
        self.user_l2_weight = user_l2_weight

    @property
    def index_active(self) -> bool:
        """Whether an index layer is present and warm-started (so training scores through it)."""
        return self.index_layer is not None and bool(self.index_layer.warmed)

    @torch.no_grad()
    def warm_start_index(self, *, seed: int = 0) -> None:
        """Warm-starts the index layer by k-means on the item side of every item (collective under
        sharding: every rank gathers the tables and runs the same seeded k-means)."""
        if self.index_layer is None:
            raise RuntimeError("this model has no index layer ([index] kind = 'none')")
        items = self.tables.all_item_embeddings()  # (N, D)
        layer: Any = self.index_layer  # an IndexLayer (mol_index.layers)
        layer.warm_start(self.similarity.item_side(items), seed=seed)

    @property
    def uses_users(self) -> bool:
        """Whether the similarity has user-id components."""
        return isinstance(self.similarity, MoLSimilarity) and self.similarity.user_components > 0

    def forward(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
        user_ids: torch.Tensor | None = None,
    ) -> LossParts:
        """The training loss of a batch.

        Args:
            inputs: ``(B, L)`` right-aligned input item ids, 0 = padding.
            targets: ``(B, L)`` next item of every position, 0 = padding.
            negatives: uniformly sampled item ids in ``[1, N]`` (mol_train.negatives.sample_negatives):
                ``(M, R)`` per position, ``(B, R)`` per sequence or ``(R,)`` for the whole batch, as
                ``negative_sampling`` says (unused by the in-batch loss, but still looked up so every rank
                runs the same collectives).
            timestamps: ``(B, L)`` input times, or ``None``.
            next_timestamps: ``(B,)`` time of the last position's target, or ``None``.
            user_ids: ``(B,)`` user ids, required when the similarity has user components.
        """
        both = torch.cat([inputs, targets], dim=0)  # (2B, L): one lookup for histories and positives
        mask = targets != 0  # (B, L)
        sampling = self.negative_sampling
        _check_negatives(sampling, negatives, mask)
        candidates, inverse = lookup_ids(sampling, negatives)  # (1, U) | (B, R) | (1, R)
        lookup = self.tables(both, candidates, user_ids if self.uses_users else None)
        batch = inputs.shape[0]
        history, positives = lookup.sequence[:batch], lookup.sequence[batch:]  # (B, L, D) each
        hidden = self.encoder(history, inputs != 0, timestamps, next_timestamps)  # (B, L, D)
        query_repr = hidden[mask]  # (M, D)
        user_repr = None
        user_l2 = torch.zeros((), device=hidden.device)
        if lookup.users is not None:
            user_repr = lookup.users.unsqueeze(1).expand(-1, inputs.shape[1], -1)[mask]  # (M, Du)
            user_l2 = user_repr.pow(2).sum(dim=-1).mean()  # before the similarity's user dropout
        query = self.similarity.query_side(query_repr, user_repr)
        positive_side = self.similarity.item_side(positives[mask])  # (M, Px, d)
        raw_positives, raw_negatives = positive_side, None  # what the index layer's loss sees
        if self.index_active:
            positive_side = self.index_layer(positive_side)  # type: ignore[misc]
        positive_ids = targets[mask]  # (M,)
        if self.loss_kind is LossKind.IN_BATCH:
            scores, weights = self.similarity.score_pairs_with_weights(query, positive_side)  # (M, M)
            log_q = None if self.item_log_q is None else self.item_log_q[positive_ids]
            softmax = in_batch_softmax_loss(scores, positive_ids, log_q=log_q)
            pair_weights = weights.diagonal(dim1=0, dim2=1).T  # (M, P): each query with its own positive
        else:
            paired = ItemSide(
                positive_side.embeddings.unsqueeze(1),
                None if positive_side.gating is None else positive_side.gating.unsqueeze(1),
            )  # (M, 1, Px, d)
            pos_scores, weights = self.similarity.score_pairs_with_weights(query, paired)  # (M, 1)
            negative_side = self.similarity.item_side(lookup.candidates)  # (B or 1, R or U, Px, d)
            raw_negatives = negative_side
            if self.index_active:
                negative_side = self.index_layer(negative_side)  # type: ignore[misc]
            neg_scores = score_negatives(
                self.similarity, query, negative_side, sampling, mask=mask, inverse=inverse
            )  # (M, R)
            negative_ids = negative_ids_per_position(sampling, negatives, mask)  # (M, R) or (R,)
            softmax = sampled_softmax_loss(
                pos_scores[:, 0], neg_scores, positive_ids=positive_ids, negative_ids=negative_ids
            )
            pair_weights = weights[:, 0]  # (M, P)
        mutual_information = torch.zeros((), device=softmax.device)
        if self.mi_weight > 0 and isinstance(self.similarity, MoLSimilarity):
            mutual_information = mutual_information_loss(pair_weights)
        index_loss = self._index_loss(query, raw_positives, raw_negatives)
        loss = softmax + self.mi_weight * mutual_information + self.index_weight * index_loss
        if self.user_l2_weight > 0:
            loss = loss + self.user_l2_weight * user_l2
        return LossParts(
            loss, softmax, mutual_information, mask.sum().float(), index_loss.detach(), user_l2.detach()
        )

    def _index_loss(self, query: QuerySide, positives: ItemSide, negatives: ItemSide | None) -> torch.Tensor:
        """The index layer's loss once warm (``negatives``: the uniformly sampled items, a sample of the
        whole catalogue, or ``None`` for the in-batch loss); before, a zero that still touches every layer
        parameter (so data-parallel training sees no unused parameters)."""
        if self.index_layer is None:
            return torch.zeros((), device=positives.embeddings.device)
        if not self.index_active:
            zero = torch.zeros((), device=positives.embeddings.device)
            return sum((p.sum() * 0.0 for p in self.index_layer.parameters()), zero)
        layer: Any = self.index_layer  # an IndexLayer (mol_index.layers)
        loss: torch.Tensor = layer.loss(query, positives, self.similarity, negatives)
        return loss

    @torch.no_grad()
    def query_encoder(self) -> QueryEncoder:
        """A torchrec-free copy of the query path for evaluation and export (collective under sharding).

        The item and user tables are gathered into plain tensors (every rank gets all rows), so the
        returned module looks embeddings up locally and each rank can encode its own queries.
        """
        items = self.tables.all_item_embeddings()  # (N, D)
        padded = torch.cat([torch.zeros_like(items[:1]), items])  # (N + 1, D), row 0 = padding
        users = None
        if self.uses_users and self.tables.num_user_buckets is not None:
            rows = torch.arange(self.tables.num_user_buckets, device=items.device)
            users = self.tables.lookup_users(rows)  # (U, Du): row r = bucket r
        return QueryEncoder(padded, users, self.encoder, self.similarity, self.index_layer)

    @torch.no_grad()
    def corpus_side(self, encoder: QueryEncoder) -> ItemSide:
        """The item side of every item ``1..N`` (row ``i`` = item id ``i + 1``): ``(N, Px, d)``."""
        return self.similarity.item_side(encoder.item_table[1:])


class QueryEncoder(nn.Module):
    """History -> query side, with plain embedding tensors instead of torchrec tables.

    This is what a model bundle exports: it needs neither torchrec nor mol-train to run.

    Args:
        item_table: ``(N + 1, D)`` item embeddings, row 0 = padding (zeros).
        user_table: ``(U, Du)`` hashed user-id embeddings (row = ``user_id % U``), or ``None``.
        encoder: the sequence encoder.
        similarity: the similarity head (only its query side runs here).
        index_layer: the model's jointly trained index layer, kept with the weights for export (not part
            of the query path), or ``None``.
    """

    item_table: torch.Tensor
    user_table: torch.Tensor | None
    encoder: nn.Module
    similarity: Similarity

    def __init__(
        self,
        item_table: torch.Tensor,
        user_table: torch.Tensor | None,
        encoder: nn.Module,
        similarity: Similarity,
        index_layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("item_table", item_table.detach().clone())
        self.register_buffer("user_table", None if user_table is None else user_table.detach().clone())
        self.encoder = encoder
        self.similarity = similarity
        self.index_layer = index_layer

    def forward(
        self,
        history: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
        user_ids: torch.Tensor | None = None,
    ) -> QuerySide:
        """The query side of the last position of each right-aligned history.

        Args:
            history: ``(B, L)`` item ids in ``[0, N]``, 0 = padding on the left.
            timestamps: ``(B, L)`` item times, or ``None``.
            next_timestamps: ``(B,)`` the time the query is about, or ``None``.
            user_ids: ``(B,)`` user ids; used only when the similarity has user components.

        Returns:
            ``QuerySide``: embeddings ``(B, Pq, d)`` and gating ``(B, P)`` (or ``None``).
        """
        embeddings = nn.functional.embedding(history, self.item_table)  # (B, L, D)
        hidden = self.encoder(embeddings, history != 0, timestamps, next_timestamps)  # (B, L, D)
        users = None
        if self.user_table is not None and user_ids is not None:
            users = self.user_table[user_ids % self.user_table.shape[0]]  # (B, Du)
        return self.similarity.query_side(hidden[:, -1], users)  # (B, Pq, d)


def build_similarity(config: TrainConfig) -> Similarity:
    """The similarity head a config describes, with query and item input width D = ``model.item_dim``."""
    sim, width = config.similarity, config.model.item_dim
    if sim.kind is SimilarityKind.DOT:
        return DotProductSimilarity(width, l2_normalize=sim.l2_normalize, temperature=sim.temperature)
    return MoLSimilarity(
        query_input_dim=width,
        item_input_dim=width,
        query_components=sim.query_components,
        item_components=sim.item_components,
        component_dim=sim.component_dim,
        temperature=sim.temperature,
        gating_hidden_dim=sim.gating_hidden_dim,
        gating_dropout=sim.gating_dropout,
        user_components=sim.user_components,
        user_dropout=sim.user_dropout,
        query_layer_norm=sim.query_layer_norm,
        query_hidden_dim=sim.query_hidden_dim,
        item_dropout=sim.item_dropout,
        user_direct=sim.user_direct,
        init=sim.init,
        user_input_dim=config.user_dim if sim.user_components > 0 else None,
    )


def build_encoder(config: TrainConfig) -> nn.Module:
    """The sequence encoder a config describes (``max_len`` positions of width ``model.item_dim``)."""
    model = config.model
    if model.encoder is EncoderKind.SASREC:
        return SASRecEncoder(
            dim=model.item_dim,
            max_len=config.data.max_len,
            num_blocks=model.num_blocks,
            num_heads=model.num_heads,
            ffn_dim=model.item_dim,
            dropout=model.dropout,
        )
    return HSTUEncoder(
        dim=model.item_dim,
        max_len=config.data.max_len,
        num_blocks=model.num_blocks,
        num_heads=model.num_heads,
        attention_dim=model.attention_dim,
        linear_dim=model.linear_dim,
        dropout=model.dropout,
    )


def build_model(
    config: TrainConfig,
    num_items: int,
    *,
    item_log_q: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> SequentialRecommender:
    """The whole model for ``num_items`` items (ids ``1..N``) as a config describes it.

    Args:
        config: a validated configuration.
        num_items: N.
        item_log_q: ``(N + 1,)`` log sampling probabilities for the in-batch loss's logQ correction.
        device: where the tables are created (``None``: the CPU).

    Returns:
        the model, in training mode.

    Raises:
        ConfigError: an index layer is asked for and mol-index is missing, or its options are invalid.

    Example::

        model = build_model(load_config("tiny_cpu"), num_items=dataset.num_items)
    """
    user_buckets = config.model.user_buckets if config.similarity.user_components > 0 else None
    tables = EmbeddingTables(
        num_items,
        config.model.item_dim,
        num_user_buckets=user_buckets,
        user_dim=config.user_dim if user_buckets is not None else None,
        device=device,
    )
    similarity = build_similarity(config)
    return SequentialRecommender(
        tables=tables,
        encoder=build_encoder(config),
        similarity=similarity,
        mi_weight=config.train.mi_weight,
        loss=config.train.loss,
        item_log_q=item_log_q,
        index_layer=build_index_layer(config, similarity),
        index_weight=config.index.weight,
        negative_sampling=config.negative_sampling,
        user_l2_weight=config.train.user_l2_weight if isinstance(similarity, MoLSimilarity) else 0.0,
    )


def build_index_layer(config: TrainConfig, similarity: Similarity) -> nn.Module | None:
    """The index layer ``[index]`` asks for, or ``None`` (``kind = "none"``).

    Raises:
        ConfigError: a layer is asked for but mol-index is not installed, or its options are invalid.
    """
    if config.index.kind == "none":
        return None
    try:
        from mol_index.layers import build_index_layer as build_layer
    except ImportError as err:
        raise ConfigError(
            f"index.kind = {config.index.kind!r} needs mol-index: pip install 'mol-train[index]' ({err})"
        ) from err
    return build_layer(config.index.kind, similarity, config.index.layer_options())


def _check_negatives(sampling: NegativeSampling, negatives: torch.Tensor, mask: torch.Tensor) -> None:
    """Raises ShapeError unless ``negatives`` has the shape ``sampling`` draws (see sample_negatives)."""
    rows = {
        NegativeSampling.PER_POSITION: (int(mask.sum()), "M = valid positions"),
        NegativeSampling.PER_SEQUENCE: (int(mask.shape[0]), "B = sequences"),
    }
    if sampling is NegativeSampling.SHARED:
        if negatives.dim() != 1:
            raise ShapeError(f"shared negatives must have shape (R,); got {tuple(negatives.shape)}")
        return
    want, what = rows[sampling]
    if negatives.dim() != 2 or negatives.shape[0] != want:
        raise ShapeError(
            f"{sampling.value} negatives must have shape ({what} = {want}, R); got {tuple(negatives.shape)}"
        )
