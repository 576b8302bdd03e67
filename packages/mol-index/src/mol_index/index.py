"""``MolIndex``: the index interface (as FAISS's ``faiss.Index``), one subclass per kind.

    index = index_factory(similarity, item_ids, items, "hnsw32")   # or MolIndex.build(..., stage="hnsw")
    scores, ids = index.search(query_side, k=10, exclude=history, params=RailsParams(k_prime=64))
    index.save("artifacts/my-index");  index = MolIndex.load("artifacts/my-index")  # the right subclass

Kinds (:mod:`mol_index.indexes`): ``exact`` (:class:`~mol_index.indexes.IndexExact`), ``faiss-flat`` /
``faiss-ivf`` / ``faiss-hnsw`` (:class:`~mol_index.indexes.IndexFaiss`), ``pq``, ``hierarchical``,
``adaptive``. Every kind keeps the whole item side, so every kind answers :class:`ExactParams` and
:class:`RailsParams`; each also answers its own parameters class. Shape symbols: ``B`` queries, ``N``
items, ``Pq``/``Px`` components, ``P = Pq * Px``, ``d`` dimension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from mol_core.errors import ConfigError, ShapeError
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index._inputs import Exclude, as_query_side, exclusion_tensor
from mol_index.artifact import KINDS, LoadedArtifact, read_artifact, write_artifact
from mol_index.kernels import choose_kernel, exact_topk
from mol_index.params import AlgorithmParams, ExactParams, LinearizedParams, RailsParams, SearchParams
from mol_index.search.candidates import CandidateStage, FaissStage, StageParams, TorchStage
from mol_index.search.linearized import linearized_search
from mol_index.search.rails import Algorithm, SearchResult, rails_search

__all__ = ["MolIndex", "check_item_ids"]


class MolIndex:
    """A searchable corpus: the similarity, the ``(N, Px, d)`` item side and ``N`` external ids.

    Build one with :func:`mol_index.index_factory` (or :meth:`build`), persist with :meth:`save` /
    :meth:`load`. Subclasses add their search structure and parameters class.

    Args:
        similarity: scores (query, item) pairs; kept in ``eval()`` mode.
        item_ids: ``(N,)`` distinct non-negative int64 external ids.
        corpus: the ``(N, Px, d)`` item side (gating ``(N, P)`` for MoL).
        parameters: build parameters recorded in the manifest.
        source_bundle_sha256: SHA-256 of the source model bundle's manifest.json ("" when built from
            arrays); saved in the index manifest.

    Raises:
        ShapeError: ids and corpus disagree on ``N``, or ids that are not integers.
        ConfigError: negative or repeated ids.
    """

    #: The stage kind this class stores in its artifacts (``torch``: the exact GEMM stage).
    STAGE_KIND: ClassVar[str] = "torch"
    #: The learned structures of the other kinds, ``None`` here (kept for callers that test for them).
    adaptive: Any = None
    pq: Any = None
    hierarchical: Any = None

    def __init__(
        self,
        similarity: Similarity,
        item_ids: torch.Tensor,
        corpus: ItemSide,
        *,
        parameters: dict[str, str] | None = None,
        source_bundle_sha256: str = "",
    ) -> None:
        self.similarity = similarity.eval()
        self.source_bundle_sha256 = source_bundle_sha256
        self.item_ids = check_item_ids(item_ids, corpus.num_items)
        self.corpus = corpus
        self.parameters = dict(parameters or {})
        self._stage: CandidateStage = TorchStage(corpus.embeddings, corpus.gating)
        self._sorted_ids, self._order = torch.sort(self.item_ids)  # (N,), (N,) for id -> row lookups

    # ------------------------------------------------------------------ build, save, load

    @classmethod
    def build(
        cls,
        similarity: Similarity,
        item_ids: torch.Tensor,
        items: ItemSide | torch.Tensor,
        *,
        stage: str = "torch",
        nlist: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        exact_mean: bool = True,
        linearized: bool = False,
    ) -> MolIndex:
        """An ``exact`` (``stage="torch"``) or FAISS-stage (``flat``, ``ivf``, ``hnsw``) index of ``N`` items.

        The same as :func:`mol_index.index_factory` with the spec ``exact``, ``flat``, ``ivf<nlist>`` or
        ``hnsw<hnsw_m>``; see :meth:`mol_index.indexes.IndexFaiss.from_items` for the arguments.
        """
        from mol_index.indexes import IndexExact, IndexFaiss

        if stage == "torch":
            return IndexExact.from_items(similarity, item_ids, items)
        return IndexFaiss.from_items(
            similarity,
            item_ids,
            items,
            stage=stage,
            nlist=nlist,
            hnsw_m=hnsw_m,
            ef_construction=ef_construction,
            exact_mean=exact_mean,
            linearized=linearized,
        )

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Writes the index as an artifact directory, atomically (see :mod:`mol_index.artifact`).

        Raises:
            ArtifactError: ``path`` exists (without ``overwrite``) or cannot be written.
        """
        from mol_index import __version__

        return write_artifact(
            path,
            similarity=self.similarity,
            item_ids=self.item_ids,
            corpus=self.corpus,
            stage_kind=self.stage_kind,
            faiss_stage=self.faiss_stage,
            parameters=self.parameters,
            version=__version__,
            overwrite=overwrite,
            source_bundle_sha256=self.source_bundle_sha256,
            adaptive=self.adaptive,
            pq=self.pq,
            hierarchical=self.hierarchical,
        )

    @classmethod
    def load(cls, path: str | Path) -> MolIndex:
        """Loads any index artifact as its kind's class, verifying format version and checksums first.

        Raises:
            ArtifactError: missing, corrupt, or of another format version or kind.
        """
        return cls.from_artifact(read_artifact(path))

    @classmethod
    def from_artifact(cls, art: LoadedArtifact) -> MolIndex:
        """The index of an artifact already read (and checked) by :func:`mol_index.artifact.read_artifact`,
        for callers that also need its manifest (index version, kind); its kind's class."""
        from mol_index.indexes import index_class

        return index_class(art.stage_kind)._from_artifact(art)

    @classmethod
    def _from_artifact(cls, art: LoadedArtifact) -> MolIndex:
        return cls(
            art.similarity,
            art.item_ids,
            art.corpus,
            parameters=dict(art.manifest.parameters),
            source_bundle_sha256=art.manifest.source_bundle_sha256,
        )

    # ------------------------------------------------------------------ properties, placement

    @property
    def stage_kind(self) -> str:
        """The artifact's stage kind: ``torch``, ``flat``, ``ivf``, ``hnsw``, ``pq``, ``hierarchical`` or
        ``adaptive``."""
        return self.STAGE_KIND

    @property
    def num_items(self) -> int:
        """``N``."""
        return self.corpus.num_items

    @property
    def faiss_stage(self) -> FaissStage | None:
        """The FAISS candidate stage of a FAISS-stage index, else ``None``."""
        return None

    @property
    def device(self) -> torch.device:
        """Where the corpus lives and searches run (queries are moved here)."""
        return self.corpus.embeddings.device

    @property
    def kind(self) -> str:
        """The artifact kind: ``exact``, ``faiss-flat``, ``faiss-ivf``, ``faiss-hnsw``, ``adaptive``, ``pq``
        or ``hierarchical``."""
        return KINDS[self.stage_kind]

    def to(self, device: torch.device | str) -> MolIndex:
        """Moves the similarity, corpus, id tables and search structure to ``device`` (in place); returns
        ``self``. Results of :meth:`search` are then on ``device`` too.

        Raises:
            ConfigError: a FAISS-stage index asked to leave the CPU.
        """
        target = torch.device(device)
        self.similarity = self.similarity.to(target)
        self.corpus = self.corpus.to(target)
        self.item_ids = self.item_ids.to(target)
        self._sorted_ids, self._order = self._sorted_ids.to(target), self._order.to(target)
        self._stage = TorchStage(self.corpus.embeddings, self.corpus.gating)
        return self

    # ------------------------------------------------------------------ search

    def search(
        self,
        queries: QuerySide | torch.Tensor,
        k: int,
        *,
        gating: torch.Tensor | None = None,
        exclude: Exclude | None = None,
        params: SearchParams | AlgorithmParams | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top ``k`` items per query: ``(scores, ids)``, both ``(B, k)``, in the FAISS style.

        Args:
            queries: a ``QuerySide``, ``(B, Pq, d)`` query component embeddings (pass ``gating``
                ``(B, P)`` for MoL), or ``(B, d)`` query vectors for a dot-product index.
            k: results per query, ``1 <= k <= N``.
            gating: ``(B, P)`` query gating features when ``queries`` is a tensor.
            exclude: external item ids to leave out per query (e.g. the history): a ``(B, L)`` int tensor
                padded with ``-1`` or ``B`` lists; ids not in the index are ignored.
            params: :class:`ExactParams`, :class:`RailsParams`, this kind's own class, or a
                :class:`SearchParams` request; default :class:`RailsParams` (CombTopK, ``K' = 64``).

        Returns:
            ``(B, k)`` float32 scores, descending, and ``(B, k)`` int64 external ids; ``-inf`` / ``-1``
            where fewer than ``k`` items remain.

        Raises:
            ShapeError: queries that do not fit the similarity (wrong ``Pq``, ``d`` or missing gating).
            ConfigError: ``k`` not in ``[1, N]``, bad params, or params of another index kind.

        Example:
            ``scores, ids = index.search(query_side, 10, params=ExactParams())``
        """
        result = self.search_with_info(queries, k, gating=gating, exclude=exclude, params=params)
        return result.scores, result.ids

    def search_with_info(
        self,
        queries: QuerySide | torch.Tensor,
        k: int,
        *,
        gating: torch.Tensor | None = None,
        exclude: Exclude | None = None,
        params: SearchParams | AlgorithmParams | None = None,
    ) -> SearchResult:
        """Like :meth:`search`, returning a :class:`~mol_index.search.rails.SearchResult` with per-query
        exactness flags, candidate counts and the ``K'`` used; ``ids`` are external ids."""
        resolved = _resolve(params)
        device = self.device
        if isinstance(queries, torch.Tensor):  # raw vectors may go through the similarity: same device
            queries = queries.to(device)
            gating = None if gating is None else gating.to(device)
        query = as_query_side(self.similarity, queries, gating)
        if query.embeddings.device != device:
            query = QuerySide(
                query.embeddings.to(device), None if query.gating is None else query.gating.to(device)
            )
        excluded = exclusion_tensor(exclude, query.batch_size)
        rows_excluded = self._rows_of(None if excluded is None else excluded.to(device))
        rows_excluded = self._with_removed(rows_excluded, query.batch_size)
        with torch.inference_mode():
            res = self._search_rows(query, k, rows_excluded, resolved)
        ids = torch.where(res.ids >= 0, self.item_ids[res.ids.clamp_min(0)], torch.full_like(res.ids, -1))
        return SearchResult(res.scores, ids, res.exact, res.num_candidates, res.k_prime)

    def _search_rows(
        self, query: QuerySide, k: int, rows_excluded: torch.Tensor | None, params: AlgorithmParams
    ) -> SearchResult:
        """The top ``k`` corpus rows; subclasses answer their own parameters class and defer the rest here."""
        if (
            isinstance(params, ExactParams)
            and choose_kernel(params.kernel, self.similarity, self.device) != "torch"
        ):
            scores, rows = exact_topk(
                self.similarity, query, self.corpus, k, exclude=rows_excluded, kernel=params.kernel
            )
            batch, device = query.batch_size, query.embeddings.device
            everything = torch.full((batch,), self.num_items, dtype=torch.int64, device=device)
            exact = torch.ones(batch, dtype=torch.bool, device=device)
            return SearchResult(scores, rows, exact, everything, everything.clone())
        if isinstance(params, (ExactParams, RailsParams)):
            rails = params if isinstance(params, RailsParams) else None
            return rails_search(
                self.similarity,
                query,
                self.corpus,
                k,
                self._stage,
                algorithm=Algorithm.EXACT if rails is None else Algorithm(rails.algorithm),
                k_prime=64 if rails is None else rails.k_prime,
                k_prime_avg=None if rails is None else rails.k_prime_avg,
                exclude=rows_excluded,
                guarantee_exact=rails is not None and rails.guarantee_exact,
                stage_params=StageParams(
                    nprobe=None if rails is None else rails.nprobe,
                    ef_search=None if rails is None else rails.ef_search,
                ),
                block_size=params.block_size,
            )
        if isinstance(params, LinearizedParams):
            return linearized_search(
                self.similarity,
                query,
                self.corpus,
                k,
                self._stage,
                k_prime=params.k_prime,
                k_prime_avg=params.k_prime_avg,
                rounds=params.rounds,
                exclude=rows_excluded,
                stage_params=StageParams(nprobe=params.nprobe, ef_search=params.ef_search),
                early_nprobe=params.early_nprobe,
            )
        name = params.algorithm.value
        raise ConfigError(
            f"algorithm {name!r} needs an index of kind {name!r} (this one is {self.kind!r}); build one with "
            f"mol_index.index_factory or `mol-index build --kind {name}`"
        )

    # ------------------------------------------------------------------ items

    def add_items(self, item_ids: torch.Tensor, items: ItemSide) -> None:
        """Adds items without a rebuild (``hierarchical`` indexes only; the others are rebuilt).

        Raises:
            ConfigError: this kind cannot add items.
        """
        raise ConfigError(self._rebuild_message("add_items"))

    def remove_items(self, item_ids: torch.Tensor | list[int]) -> None:
        """Removes items without a rebuild (``hierarchical`` indexes only; the others are rebuilt).

        Raises:
            ConfigError: this kind cannot remove items.
        """
        raise ConfigError(self._rebuild_message("remove_items"))

    def _rebuild_message(self, action: str) -> str:
        return (
            f"{action} needs an index of kind 'hierarchical' (this one is {self.kind!r}); indexes of "
            "other kinds are rebuilt to change their items"
        )

    def _with_removed(self, rows_excluded: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """``rows_excluded`` plus the rows this index no longer serves (none here)."""
        return rows_excluded

    def _rows_of(self, ids: torch.Tensor | None) -> torch.Tensor | None:
        """``(B, L)`` external ids -> corpus rows; unknown ids and padding become ``-1``."""
        if ids is None:
            return None
        pos = torch.searchsorted(self._sorted_ids, ids).clamp(max=self.num_items - 1)  # (B, L)
        found = (self._sorted_ids[pos] == ids) & (ids >= 0)  # (B, L)
        return torch.where(found, self._order[pos], torch.full_like(ids, -1))


def _resolve(params: SearchParams | AlgorithmParams | None) -> AlgorithmParams:
    if params is None:
        return RailsParams()
    if isinstance(params, SearchParams):
        return params.resolve()
    return params


def check_item_ids(item_ids: torch.Tensor, num_items: int) -> torch.Tensor:
    """``item_ids`` as ``(N,)`` int64 after checking they are ``N`` distinct non-negative integers.

    Raises:
        ShapeError: another shape or a non-integer dtype.
        ConfigError: negative or repeated ids.
    """
    if item_ids.dim() != 1 or item_ids.shape[0] != num_items:
        raise ShapeError(f"item_ids must have shape (N={num_items},); got {tuple(item_ids.shape)}")
    if item_ids.dtype.is_floating_point or item_ids.dtype == torch.bool:
        raise ShapeError(f"item_ids must be integers; got dtype {item_ids.dtype}")
    ids = item_ids.to(torch.int64)
    if num_items and int(ids.min()) < 0:
        raise ConfigError("item_ids must be >= 0 (-1 marks 'no result' in search output)")
    if torch.unique(ids).numel() != num_items:
        raise ConfigError("item_ids must be distinct: each item needs its own external id")
    return ids
