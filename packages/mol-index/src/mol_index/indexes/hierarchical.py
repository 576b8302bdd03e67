"""``IndexHierarchical``: a cluster hierarchy scored top-down with the similarity (HSNN; kind
``hierarchical``); the one kind that adds and removes items without a rebuild."""

from __future__ import annotations

import torch

from mol_core.errors import ArtifactError, ConfigError, ShapeError
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index._inputs import check_k
from mol_index.artifact import LoadedArtifact
from mol_index.index import MolIndex, check_item_ids
from mol_index.params import AlgorithmParams, HierarchicalParams
from mol_index.search.candidates import TorchStage
from mol_index.search.hierarchy import HierarchicalIndex
from mol_index.search.rails import SearchResult

__all__ = ["IndexHierarchical"]


class IndexHierarchical(MolIndex):
    """Searched with :class:`~mol_index.params.HierarchicalParams` (and the exact scan and RAILS of every
    kind); :meth:`add_items` and :meth:`remove_items` work without a rebuild, for every algorithm.

    Args:
        similarity, item_ids, corpus, parameters, source_bundle_sha256: as :class:`MolIndex`.
        hierarchical: the cluster tree (:class:`~mol_index.search.hierarchy.HierarchicalIndex`).
    """

    STAGE_KIND = "hierarchical"

    def __init__(
        self,
        similarity: Similarity,
        item_ids: torch.Tensor,
        corpus: ItemSide,
        *,
        hierarchical: HierarchicalIndex,
        parameters: dict[str, str] | None = None,
        source_bundle_sha256: str = "",
    ) -> None:
        super().__init__(
            similarity, item_ids, corpus, parameters=parameters, source_bundle_sha256=source_bundle_sha256
        )
        self.hierarchical = hierarchical

    @classmethod
    def from_index(
        cls,
        index: MolIndex,
        *,
        layer: torch.nn.Module | None = None,
        branching: tuple[int, ...] = (16, 8),
        iterations: int = 20,
        seed: int = 0,
    ) -> IndexHierarchical:
        """A ``hierarchical`` index (HSNN, :mod:`mol_index.search.hierarchy`) over the items of ``index``.

        With ``layer`` (a :class:`~mol_index.layers.hierarchical.HierarchicalLayer` trained with the model)
        the items are assigned to its learned clusters, with no k-means; without it the tree is built by
        top-down k-means with ``branching`` clusters per level.

        Raises:
            ConfigError: too few items for the first level, or a bad branching.
        """
        if layer is not None:
            tree = layer.export_index(index.corpus)  # type: ignore[operator]
            parameters = {"source": "joint"}
        else:
            tree = HierarchicalIndex.build(index.corpus, tuple(branching), iterations=iterations, seed=seed)
            parameters = {"source": "kmeans", "branching": ",".join(str(b) for b in branching)}
        return cls(
            index.similarity,
            index.item_ids,
            index.corpus,
            hierarchical=tree,
            parameters=parameters,
            source_bundle_sha256=index.source_bundle_sha256,
        )

    @classmethod
    def _from_artifact(cls, art: LoadedArtifact) -> IndexHierarchical:
        if art.hierarchical is None:
            raise ArtifactError(
                f"a hierarchical artifact without its tree (index {art.manifest.index_version})"
            )
        return cls(
            art.similarity,
            art.item_ids,
            art.corpus,
            hierarchical=art.hierarchical,
            parameters=dict(art.manifest.parameters),
            source_bundle_sha256=art.manifest.source_bundle_sha256,
        )

    def to(self, device: torch.device | str) -> IndexHierarchical:
        """Moves everything, the tree included, to ``device``; returns ``self``."""
        super().to(device)
        self.hierarchical = self.hierarchical.to(torch.device(device))
        return self

    def _search_rows(
        self, query: QuerySide, k: int, rows_excluded: torch.Tensor | None, params: AlgorithmParams
    ) -> SearchResult:
        if not isinstance(params, HierarchicalParams):
            return super()._search_rows(query, k, rows_excluded, params)
        check_k(k, self.num_items)
        found = self.hierarchical.search(self.similarity, query, k, beam=params.beam, exclude=rows_excluded)
        batch, device = query.batch_size, query.embeddings.device
        return SearchResult(
            found.scores,
            found.rows,
            torch.zeros(batch, dtype=torch.bool, device=device),
            found.scored,
            torch.full((batch,), params.beam, dtype=torch.int64, device=device),
        )

    def add_items(self, item_ids: torch.Tensor, items: ItemSide) -> None:
        """Adds items without a rebuild: each goes to its nearest leaf cluster (the clusters do not move);
        every algorithm finds them from then on.

        Args:
            item_ids: ``(n,)`` new external ids, distinct and not in the index (removed ids included).
            items: their ``(n, Px, d)`` item side (``(n, P)`` gating for MoL).

        Raises:
            ConfigError: ids that are duplicated, negative or taken.
            ShapeError: items of another shape than the corpus.
        """
        ids = torch.as_tensor(item_ids).to(torch.int64).reshape(-1)
        n = ids.shape[0]
        if items.embeddings.shape[0] != n:
            raise ShapeError(f"{n} ids but {items.embeddings.shape[0]} items to add")
        taken = torch.isin(ids, self.item_ids.to(ids.device))
        if bool(taken.any()):
            raise ConfigError(
                f"ids {ids[taken].tolist()[:10]} are already in the index (removed ids cannot be reused "
                "without a rebuild)"
            )
        check_item_ids(ids, n)
        rows = self.hierarchical.add(items)  # checks the shapes first
        device = self.device
        gating = None
        if self.corpus.gating is not None and items.gating is not None:
            gating = torch.cat([self.corpus.gating, items.gating.to(device, self.corpus.gating.dtype)])
        embeddings = items.embeddings.to(device, self.corpus.embeddings.dtype)
        self.corpus = ItemSide(torch.cat([self.corpus.embeddings, embeddings]), gating)
        self.item_ids = torch.cat([self.item_ids, ids.to(device)])
        if int(rows[0]) != self.corpus.num_items - n:
            raise RuntimeError("the cluster tree and the corpus disagree on row numbers")
        self._stage = TorchStage(self.corpus.embeddings, self.corpus.gating)
        self._sorted_ids, self._order = torch.sort(self.item_ids)

    def remove_items(self, item_ids: torch.Tensor | list[int]) -> None:
        """Removes items without a rebuild: no algorithm returns them again.

        Raises:
            ConfigError: an id that is not in the index.
        """
        ids = torch.as_tensor(item_ids, dtype=torch.int64, device=self.device).reshape(1, -1)
        rows = self._rows_of(ids)
        if rows is None or bool((rows < 0).any()):
            missing = ids if rows is None else ids[rows < 0]
            raise ConfigError(f"ids {missing.tolist()[:10]} are not in the index")
        self.hierarchical.remove(rows.reshape(-1))

    def _with_removed(self, rows_excluded: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Adds the removed rows to every query's ``(B, L)`` exclusions."""
        if not bool(self.hierarchical.removed.any()):
            return rows_excluded
        removed = self.hierarchical.removed.nonzero().reshape(1, -1).to(self.device)  # (1, R)
        removed = removed.expand(batch, -1)  # (B, R)
        return removed if rows_excluded is None else torch.cat([rows_excluded, removed], dim=1)
