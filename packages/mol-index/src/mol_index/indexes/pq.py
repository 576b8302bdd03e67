"""``IndexPQ``: product-quantized items (Poeem) scanned by the decoded scores, with an exact rerank (kind
``pq``)."""

from __future__ import annotations

import torch

from mol_core.errors import ArtifactError
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index.artifact import LoadedArtifact
from mol_index.index import MolIndex
from mol_index.layers import PQItemLayer
from mol_index.params import AlgorithmParams, PQParams
from mol_index.search.pq import PQCodes, encode_corpus, fit_codes, pq_search
from mol_index.search.rails import SearchResult

__all__ = ["IndexPQ"]


class IndexPQ(MolIndex):
    """Searched with :class:`~mol_index.params.PQParams` (and the exact scan and RAILS of every kind).

    Args:
        similarity, item_ids, corpus, parameters, source_bundle_sha256: as :class:`MolIndex`.
        pq: the codes (:func:`~mol_index.search.pq.encode_corpus` or :func:`~mol_index.search.pq.fit_codes`).
    """

    STAGE_KIND = "pq"

    def __init__(
        self,
        similarity: Similarity,
        item_ids: torch.Tensor,
        corpus: ItemSide,
        *,
        pq: PQCodes,
        parameters: dict[str, str] | None = None,
        source_bundle_sha256: str = "",
    ) -> None:
        super().__init__(
            similarity, item_ids, corpus, parameters=parameters, source_bundle_sha256=source_bundle_sha256
        )
        self.pq = pq

    @classmethod
    def from_index(
        cls,
        index: MolIndex,
        *,
        layer: PQItemLayer | None = None,
        coarse: int = 1,
        subspaces: int = 8,
        codebook_size: int = 256,
        iterations: int = 20,
    ) -> IndexPQ:
        """A ``pq`` index over the items and similarity of ``index``.

        With ``layer`` (a PQ layer trained jointly with the model, e.g. from
        :func:`mol_index.layers.layer_from_bundle`) every item is encoded with it, with no k-means; without
        it the codebooks are fitted after training by k-means on the corpus (``coarse``, ``subspaces``,
        ``codebook_size``).

        Raises:
            ConfigError: too few items for the codebook size, a width the subspaces do not divide, or an
                untrained layer.
            ShapeError: a layer of another component width than the index.
        """
        if layer is not None:
            codes = encode_corpus(layer, index.corpus, source="joint")
        else:
            codes = fit_codes(
                index.corpus,
                coarse=coarse,
                subspaces=subspaces,
                codebook_size=codebook_size,
                iterations=iterations,
            )
        return cls(
            index.similarity,
            index.item_ids,
            index.corpus,
            pq=codes,
            parameters={"bytes_per_item": repr(codes.bytes_per_item())},
            source_bundle_sha256=index.source_bundle_sha256,
        )

    @classmethod
    def _from_artifact(cls, art: LoadedArtifact) -> IndexPQ:
        if art.pq is None:
            raise ArtifactError(f"a pq artifact without codes (index {art.manifest.index_version})")
        return cls(
            art.similarity,
            art.item_ids,
            art.corpus,
            pq=art.pq,
            parameters=dict(art.manifest.parameters),
            source_bundle_sha256=art.manifest.source_bundle_sha256,
        )

    def to(self, device: torch.device | str) -> IndexPQ:
        """Moves everything, the codes included, to ``device``; returns ``self``."""
        super().to(device)
        self.pq = self.pq.to(torch.device(device))
        return self

    def _search_rows(
        self, query: QuerySide, k: int, rows_excluded: torch.Tensor | None, params: AlgorithmParams
    ) -> SearchResult:
        if not isinstance(params, PQParams):
            return super()._search_rows(query, k, rows_excluded, params)
        # by default, codes from a layer trained with the model are the model's ranking (it trained and was
        # evaluated on the decoded items); codes fitted after training are a candidate stage for the rerank
        rerank = self.pq.source != "joint" if params.rerank is None else params.rerank
        return pq_search(
            self.similarity,
            query,
            self.corpus,
            self.pq,
            k,
            k_prime=params.k_prime,
            excluded=rows_excluded,
            rerank=rerank,
        )
