"""HSNN's jointly trained cluster hierarchy (:class:`HierarchicalLayer`), the index layer mol-train trains.

Soft assignment in training, hard assignment at serving: :meth:`HierarchicalLayer.export_index` turns the
trained centroids into a :class:`~mol_index.search.hierarchy.HierarchicalIndex` without another k-means. See
:mod:`mol_index.search.hierarchy` for the index, the search and what is simplified.

Shape symbols: ``M`` (query, positive) pairs, ``Px`` item components of width ``d``, ``P`` gating features,
``D`` flattened item width, ``C_l`` centroid slots of level ``l``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mol_core.errors import ConfigError, ShapeError
from mol_core.similarity import DotProductSimilarity, ItemSide, QuerySide, Similarity
from mol_index.search.hierarchy import HierarchicalIndex
from mol_index.search.hierarchy_build import (
    assemble,
    check_branching,
    check_weight,
    descend,
    flatten,
    nearest,
    top_down_kmeans,
)

__all__ = ["HierarchicalLayer"]


class HierarchicalLayer(nn.Module):
    """HSNN's jointly trained cluster hierarchy: learnable centroids per level, soft assignment in training.

    Level ``l`` (1-based) has ``prod(branching[:l])`` centroid slots: embeddings ``(C_l, Px, d)`` and, with
    gating, ``(C_l, P)``. :meth:`warm_start` fills them by the top-down k-means of
    :meth:`HierarchicalIndex.build`; slots that k-means left unused (clusters with fewer members than
    children) are marked inactive and take no part in the loss or the export.

    :meth:`loss` on a batch of ``M`` (query, positive) pairs, summed over levels, is

    - clustering: ``p = softmax(-||z - c||^2 / temperature)`` over the level's centroids, with ``z`` the
      positive's flattened item side; loss ``sum_c p_c ||z - c||^2`` (soft k-means: pulls centroids to
      items and items to centroids);
    - routing: cross-entropy of ``softmax(similarity(query, centroids))`` against ``p`` (detached), so the
      learned similarity scores the positive's clusters highest;

    weighted by ``clustering_weight`` and ``routing_weight``.

    Args:
        item_components: ``Px``.
        dim: ``d``.
        gating_dim: ``P``, or 0 for a similarity without gating (a dot product).
        branching: clusters of level 1, then children per cluster (an int for one level).
        temperature: of the soft assignment (on squared distances; unit-norm components give distances of
            order 1 per component).
        routing_weight: weight of the routing loss.
        clustering_weight: weight of the clustering loss.
        gating_weight: weight of the gating features in the clustering space (as for
            :meth:`HierarchicalIndex.build`); with 0 the gating centroids learn from the routing loss only.

    Example:
        >>> layer = HierarchicalLayer.for_similarity(similarity, branching=(32, 16))
        >>> layer.warm_start(corpus)                           # (N, Px, d) item side
        >>> loss = layer.loss(query, positives, similarity)    # (M, Pq, d) queries, (M, Px, d) positives
        >>> index = layer.export_index(corpus)
    """

    kind = "hierarchical"
    warmed: torch.Tensor

    def __init__(
        self,
        *,
        item_components: int,
        dim: int,
        gating_dim: int = 0,
        branching: int | Sequence[int] = (32, 16),
        temperature: float = 0.1,
        routing_weight: float = 1.0,
        clustering_weight: float = 1.0,
        gating_weight: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("item_components", item_components), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        if isinstance(gating_dim, bool) or not isinstance(gating_dim, int) or gating_dim < 0:
            raise ConfigError(f"gating_dim must be an integer >= 0 (0: no gating); got {gating_dim!r}")
        for name, number in (("temperature", temperature),):
            if not 0.0 < float(number) < math.inf:
                raise ConfigError(f"{name} must be a finite number > 0; got {number!r}")
        for name, number in (("routing_weight", routing_weight), ("clustering_weight", clustering_weight)):
            if not 0.0 <= float(number) < math.inf:
                raise ConfigError(f"{name} must be a finite number >= 0; got {number!r}")
        self.branching = check_branching(branching)
        self.item_components, self.dim, self.gating_dim = item_components, dim, gating_dim
        self.temperature = float(temperature)
        self.routing_weight, self.clustering_weight = float(routing_weight), float(clustering_weight)
        self.gating_weight = check_weight(gating_weight)
        sizes = [math.prod(self.branching[: level + 1]) for level in range(len(self.branching))]
        self.embeddings = nn.ParameterList(nn.Parameter(torch.zeros(c, item_components, dim)) for c in sizes)
        self.gating = nn.ParameterList(nn.Parameter(torch.zeros(c, gating_dim)) for c in sizes if gating_dim)
        for level, c in enumerate(sizes):
            self.register_buffer(f"active{level}", torch.ones(c, dtype=torch.bool))
        self.register_buffer("warmed", torch.zeros((), dtype=torch.bool))

    @classmethod
    def for_similarity(cls, similarity: Similarity, **options: object) -> HierarchicalLayer:
        """A layer shaped for ``similarity``'s item side (``Px``, ``d``, gating); ``options`` are the other
        constructor arguments."""
        gating_dim = 0 if isinstance(similarity, DotProductSimilarity) else similarity.num_components
        return cls(
            item_components=similarity.num_item_components,
            dim=similarity.component_dim,
            gating_dim=gating_dim,
            **options,  # type: ignore[arg-type]
        )

    def config(self) -> dict[str, str]:
        """Constructor arguments as text (``branching`` comma-separated), for a bundle manifest."""
        return {
            "item_components": str(self.item_components),
            "dim": str(self.dim),
            "gating_dim": str(self.gating_dim),
            "branching": ",".join(str(b) for b in self.branching),
            "temperature": repr(self.temperature),
            "routing_weight": repr(self.routing_weight),
            "clustering_weight": repr(self.clustering_weight),
            "gating_weight": repr(self.gating_weight),
        }

    @classmethod
    def from_config(cls, config: dict[str, str]) -> HierarchicalLayer:
        """A fresh layer from :meth:`config`'s text (load the trained tensors with ``load_state_dict``).

        Raises:
            ConfigError: an unknown, missing or unparsable argument.
        """
        known = {"item_components", "dim", "gating_dim", "branching", "temperature", "routing_weight"}
        known |= {"clustering_weight", "gating_weight"}
        unknown = set(config) - known
        if unknown:
            raise ConfigError(
                f"unknown hierarchical layer argument(s) {sorted(unknown)}; valid: {sorted(known)}"
            )
        try:
            return cls(
                item_components=int(config["item_components"]),
                dim=int(config["dim"]),
                gating_dim=int(config.get("gating_dim", "0")),
                branching=tuple(int(b) for b in config["branching"].split(",")),
                temperature=float(config.get("temperature", "0.1")),
                routing_weight=float(config.get("routing_weight", "1.0")),
                clustering_weight=float(config.get("clustering_weight", "1.0")),
                gating_weight=float(config.get("gating_weight", "0.0")),
            )
        except (KeyError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(
                f"hierarchical layer config {config!r} is incomplete or unparsable: {err}"
            ) from err

    def _level(self, level: int) -> tuple[ItemSide, torch.Tensor]:
        """Level ``level``'s centroids as an item side, and its flattened ``(C_l, D)`` form."""
        side = ItemSide(self.embeddings[level], self.gating[level] if self.gating_dim else None)
        return side, flatten(side, self.gating_weight)

    def _active(self, level: int) -> torch.Tensor:
        active: torch.Tensor = getattr(self, f"active{level}")
        return active

    @torch.no_grad()
    def warm_start(self, corpus: ItemSide, *, iterations: int = 20, seed: int = 0) -> None:
        """Sets the centroids by the top-down k-means of :meth:`HierarchicalIndex.build` on ``corpus``.

        Raises:
            ConfigError: fewer items than ``branching[0]``.
            ShapeError: ``corpus`` does not have this layer's ``(Px, d)`` and gating width.
        """
        self._check_items(corpus, "corpus")
        corpus = ItemSide(corpus.embeddings.detach().cpu(), _detach(corpus.gating))
        values = flatten(corpus)
        points = values if self.gating_weight == 1.0 else flatten(corpus, self.gating_weight)
        centroids, _, _ = top_down_kmeans(points, values, self.branching, iterations, seed)
        split = self.item_components * self.dim
        for level, flat in enumerate(centroids):
            count = flat.shape[0]
            device = self.embeddings[level].device
            self.embeddings[level].zero_()
            self.embeddings[level][:count] = (
                flat[:, :split].view(count, self.item_components, self.dim).to(device)
            )
            if self.gating_dim:
                self.gating[level].zero_()
                self.gating[level][:count] = flat[:, split:].to(device)
            active = self._active(level)
            active.fill_(False)
            active[:count] = True
        self.warmed.fill_(True)

    def forward(self, items: ItemSide) -> ItemSide:
        """The identity: training scores the items themselves (same interface as the PQ layer)."""
        return items

    def loss(
        self,
        query: QuerySide,
        positives: ItemSide,
        similarity: Similarity,
        negatives: ItemSide | None = None,
    ) -> torch.Tensor:
        """Clustering + routing loss (see the class docstring) of ``M`` queries and their positives.

        Args:
            query: ``(M, Pq, d)`` queries.
            positives: ``(M, Px, d)`` item sides of their positives.
            similarity: the model's similarity (scores the queries against the centroids).
            negatives: the batch's sampled negatives; unused (the routing loss needs (query, item) pairs).

        Returns:
            A scalar tensor.
        """
        self._check_items(positives, "positives")
        if query.batch_size != positives.embeddings.shape[0]:
            raise ShapeError(
                f"one positive per query expected: {query.batch_size} queries, "
                f"{positives.embeddings.shape[0]} positives"
            )
        z = flatten(positives, self.gating_weight)  # (M, D)
        clustering = z.new_zeros(())
        routing = z.new_zeros(())
        for level in range(len(self.branching)):
            side, flat = self._level(level)
            active = self._active(level)
            dist = (z.pow(2).sum(1, keepdim=True) - 2 * z @ flat.T + flat.pow(2).sum(1)).clamp_min(
                0
            )  # (M, C)
            logits = (-dist / self.temperature).masked_fill(~active, float("-inf"))
            assign = torch.softmax(logits, dim=1)  # (M, C)
            clustering = clustering + (assign * dist.masked_fill(~active, 0.0)).sum(1).mean()
            scores = similarity.score_pairs(query, side).float().masked_fill(~active, float("-inf"))  # (M, C)
            log_p = F.log_softmax(scores, dim=1).masked_fill(~active, 0.0)
            routing = routing - (assign.detach() * log_p).sum(1).mean()
        return self.clustering_weight * clustering + self.routing_weight * routing

    @torch.no_grad()
    def export_index(self, corpus: ItemSide) -> HierarchicalIndex:
        """The serving index: the tree of the trained centroids, items hard-assigned by greedy descent.

        Every active level-``l`` centroid is attached to its nearest active level-``(l-1)`` centroid;
        clusters that receive no item are pruned; the centroids are kept as trained.

        Raises:
            ShapeError: ``corpus`` does not have this layer's ``(Px, d)`` and gating width.
        """
        self._check_items(corpus, "corpus")
        corpus = ItemSide(corpus.embeddings.detach().cpu(), _detach(corpus.gating))
        weighted: list[torch.Tensor] = []  # (C_l, D) centroids in the clustering space
        centroids: list[torch.Tensor] = []  # (C_l, D) centroids with unweighted gating
        parents: list[torch.Tensor] = []
        for level in range(len(self.branching)):
            side = self._level(level)[0]
            ids = self._active(level).cpu().nonzero().squeeze(1)
            side = ItemSide(side.embeddings.detach().cpu()[ids], _detach(side.gating, ids))
            flat = flatten(side, self.gating_weight)
            if level == 0:
                parent = torch.zeros(ids.numel(), dtype=torch.int64)
            else:
                parent = nearest(flat, weighted[-1])
            weighted.append(flat)
            centroids.append(flatten(side))
            parents.append(parent)
        leaf_of = descend(flatten(corpus, self.gating_weight), weighted, parents)
        return assemble(
            corpus,
            flatten(corpus),
            centroids,
            parents,
            leaf_of,
            self.branching,
            self.gating_weight,
            recompute=False,
        )

    def _check_items(self, items: ItemSide, name: str) -> None:
        want = (self.item_components, self.dim)
        emb = items.embeddings
        if emb.dim() != 3 or tuple(emb.shape[1:]) != want:
            raise ShapeError(
                f"{name} embeddings must have shape (N, Px, d) = (N, {want[0]}, {want[1]}); "
                f"got {tuple(emb.shape)}"
            )
        if self.gating_dim == 0 and items.gating is not None:
            raise ShapeError(f"{name} has gating features but this layer was built with gating_dim=0")
        if self.gating_dim and (
            items.gating is None or tuple(items.gating.shape) != (emb.shape[0], self.gating_dim)
        ):
            got = None if items.gating is None else tuple(items.gating.shape)
            raise ShapeError(
                f"{name} gating must have shape (N={emb.shape[0]}, P={self.gating_dim}); got {got}"
            )


def _detach(t: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor | None:
    if t is None:
        return None
    t = t.detach().cpu()
    return t if rows is None else t[rows]
