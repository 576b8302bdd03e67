"""``IndexFaiss``: RAILS with FAISS candidate stages over the item components (kinds ``faiss-flat``,
``faiss-ivf``, ``faiss-hnsw``)."""

from __future__ import annotations

import torch

from mol_core.errors import ConfigError
from mol_core.similarity import ItemSide, Similarity
from mol_index.artifact import LoadedArtifact
from mol_index.index import MolIndex, check_item_ids
from mol_index.indexes.exact import checked_corpus
from mol_index.search.candidates import STAGE_KINDS, FaissStage

__all__ = ["IndexFaiss"]


class IndexFaiss(MolIndex):
    """RAILS whose candidates come from FAISS indexes over each item component and the mean
    (:class:`~mol_index.params.RailsParams`: ``nprobe`` for IVF, ``ef_search`` for HNSW), the linearized
    search when built with ``linearized=True`` (:class:`~mol_index.params.LinearizedParams`), plus the exact
    scan. FAISS stages here are CPU indexes: the index stays on the CPU.

    Args:
        similarity, item_ids, corpus, parameters, source_bundle_sha256: as :class:`MolIndex`.
        faiss_stage: the built stage (:meth:`~mol_index.search.candidates.FaissStage.build`).
    """

    def __init__(
        self,
        similarity: Similarity,
        item_ids: torch.Tensor,
        corpus: ItemSide,
        *,
        faiss_stage: FaissStage,
        parameters: dict[str, str] | None = None,
        source_bundle_sha256: str = "",
    ) -> None:
        super().__init__(
            similarity, item_ids, corpus, parameters=parameters, source_bundle_sha256=source_bundle_sha256
        )
        self._faiss_stage = faiss_stage
        self._stage = faiss_stage

    @classmethod
    def from_items(
        cls,
        similarity: Similarity,
        item_ids: torch.Tensor,
        items: ItemSide | torch.Tensor,
        *,
        stage: str = "hnsw",
        nlist: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        exact_mean: bool = True,
        linearized: bool = False,
    ) -> IndexFaiss:
        """A FAISS-stage index over ``N`` items.

        Args:
            similarity: a ``MoLSimilarity`` or ``DotProductSimilarity`` (the index stores its parameters).
            item_ids: ``(N,)`` distinct non-negative integer external ids.
            items: the ``(N, Px, d)`` item side, or ``(N, Dx)`` item representations.
            stage: ``flat`` (FAISS exact), ``ivf`` or ``hnsw`` (FAISS approximate).
            nlist: IVF lists (default ``4 * sqrt(N)``, capped at ``N // 39``).
            hnsw_m: HNSW neighbours per node.
            ef_construction: HNSW build beam width.
            exact_mean: index the mean item embeddings (the TopKAvg search) exactly with ``IndexFlatIP``
                (default), or with the stage's own kind when False.
            linearized: also index the linearized item vectors (the concatenated item components, then
                the item gating features of a MoL similarity) with the stage's kind, for the linearized
                search (:class:`~mol_index.params.LinearizedParams`).

        Raises:
            ConfigError: unknown stage, duplicate or negative ids.
            ShapeError: ids and items disagree on ``N`` or the items do not fit the similarity.
        """
        if stage not in STAGE_KINDS[1:]:
            raise ConfigError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_KINDS)}")
        corpus = checked_corpus(similarity, items)
        ids = check_item_ids(torch.as_tensor(item_ids), corpus.num_items)  # before the expensive build
        faiss_stage = FaissStage.build(
            stage,
            corpus.embeddings,
            nlist=nlist,
            hnsw_m=hnsw_m,
            ef_construction=ef_construction,
            exact_mean=exact_mean,
            concatenated=linearized,
            item_gating=corpus.gating,
        )
        parameters = {"mean_index": "flat" if exact_mean else stage}
        if linearized:
            parameters["concatenated_index"] = stage
        if stage == "ivf":
            parameters["nlist"] = str(faiss_stage.nlist)
        if stage == "hnsw":
            parameters |= {"hnsw_m": str(hnsw_m), "ef_construction": str(ef_construction)}
        return cls(similarity, ids, corpus, faiss_stage=faiss_stage, parameters=parameters)

    @classmethod
    def _from_artifact(cls, art: LoadedArtifact) -> IndexFaiss:
        if art.faiss_stage is None:
            raise ConfigError(f"stage_kind {art.stage_kind!r} needs a built FaissStage")
        return cls(
            art.similarity,
            art.item_ids,
            art.corpus,
            faiss_stage=art.faiss_stage,
            parameters=dict(art.manifest.parameters),
            source_bundle_sha256=art.manifest.source_bundle_sha256,
        )

    @property
    def stage_kind(self) -> str:
        """``flat``, ``ivf`` or ``hnsw``."""
        return self._faiss_stage.kind

    @property
    def faiss_stage(self) -> FaissStage:
        """The FAISS candidate stage."""
        return self._faiss_stage

    def to(self, device: torch.device | str) -> IndexFaiss:
        """Stays on the CPU (a no-op there).

        Raises:
            ConfigError: asked to leave the CPU.
        """
        target = torch.device(device)
        if target.type != "cpu":
            raise ConfigError(
                f"a {self.kind} index runs its FAISS stage on the CPU and cannot move to {target}; "
                "build a torch-stage (exact) index to search on a GPU"
            )
        return self
