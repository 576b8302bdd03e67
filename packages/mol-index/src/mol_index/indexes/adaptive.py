"""``IndexAdaptive``: adaptive retrieval for expensive scorers (AXN; kind ``adaptive``)."""

from __future__ import annotations

import torch

from mol_core.errors import ArtifactError
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index._inputs import as_query_side, check_k
from mol_index.artifact import LoadedArtifact
from mol_index.index import MolIndex
from mol_index.params import AdaptiveParams, AlgorithmParams
from mol_index.search.adaptive_model import AdaptiveModel, build_adaptive_model, search_adaptive_model
from mol_index.search.rails import SearchResult

__all__ = ["IndexAdaptive"]


class IndexAdaptive(MolIndex):
    """Searched with :class:`~mol_index.params.AdaptiveParams` (and the exact scan and RAILS of every kind):
    a budget of scorer calls per query, spent over retrieve-score-refit rounds.

    Args:
        similarity, item_ids, corpus, parameters, source_bundle_sha256: as :class:`MolIndex`.
        adaptive: the learned model (:func:`~mol_index.search.adaptive.build_adaptive_model`).
    """

    STAGE_KIND = "adaptive"

    def __init__(
        self,
        similarity: Similarity,
        item_ids: torch.Tensor,
        corpus: ItemSide,
        *,
        adaptive: AdaptiveModel,
        parameters: dict[str, str] | None = None,
        source_bundle_sha256: str = "",
    ) -> None:
        super().__init__(
            similarity, item_ids, corpus, parameters=parameters, source_bundle_sha256=source_bundle_sha256
        )
        self.adaptive = adaptive

    @classmethod
    def from_index(
        cls,
        index: MolIndex,
        train_queries: QuerySide,
        *,
        per_query: int = 100,
        reg: float = 1000.0,
        iterations: int = 10,
    ) -> IndexAdaptive:
        """An ``adaptive`` index over the items and similarity of ``index``.

        Args:
            index: any index (its similarity, items, ids and source bundle are reused).
            train_queries: ``Q`` training queries drawn like real ones, ``(Q, Pq, d)`` (+ ``(Q, P)`` gating).
            per_query: items scored per training query by the similarity (the index's only scorer calls).
            reg: ridge strength of the factorization and the query map.
            iterations: ALS sweeps.

        Raises:
            ConfigError: ``per_query`` not in ``[1, N]``, bad ``reg`` / ``iterations``.
            ShapeError: training queries that do not fit the similarity.
        """
        train = as_query_side(index.similarity, train_queries, None)
        model = build_adaptive_model(
            index.similarity, index.corpus, train, per_query=per_query, reg=reg, iterations=iterations
        )
        parameters = {
            "train_queries": str(train.batch_size),
            "per_query": str(per_query),
            "reg": repr(float(reg)),
            "iterations": str(iterations),
        }
        return cls(
            index.similarity,
            index.item_ids,
            index.corpus,
            adaptive=model,
            parameters=parameters,
            source_bundle_sha256=index.source_bundle_sha256,
        )

    @classmethod
    def _from_artifact(cls, art: LoadedArtifact) -> IndexAdaptive:
        if art.adaptive is None:
            raise ArtifactError(
                f"an adaptive artifact without its model (index {art.manifest.index_version})"
            )
        return cls(
            art.similarity,
            art.item_ids,
            art.corpus,
            adaptive=art.adaptive,
            parameters=dict(art.manifest.parameters),
            source_bundle_sha256=art.manifest.source_bundle_sha256,
        )

    def to(self, device: torch.device | str) -> IndexAdaptive:
        """Moves everything, the learned model included, to ``device``; returns ``self``."""
        super().to(device)
        self.adaptive = self.adaptive.to(torch.device(device))
        return self

    def _search_rows(
        self, query: QuerySide, k: int, rows_excluded: torch.Tensor | None, params: AlgorithmParams
    ) -> SearchResult:
        if not isinstance(params, AdaptiveParams):
            return super()._search_rows(query, k, rows_excluded, params)
        check_k(k, self.num_items)
        budget = min(self.num_items, params.budget or max(k, 200))
        found = search_adaptive_model(
            self.similarity,
            query,
            self.corpus,
            self.adaptive,
            k,
            budget=budget,
            rounds=min(params.rounds, budget),
            exclude=rows_excluded,
        )
        batch, device = query.batch_size, query.embeddings.device
        never = torch.zeros(batch, dtype=torch.bool, device=device)
        return SearchResult(
            found.scores, found.rows, never, found.scorer_calls, torch.full_like(found.scorer_calls, budget)
        )
