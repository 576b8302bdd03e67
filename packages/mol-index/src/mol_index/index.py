"""``MolIndex``: exact and RAILS top-k over a corpus, with external item ids, in the FAISS style.

    index = MolIndex.build(similarity, item_ids, item_side, stage="hnsw")  # or "torch", "flat", "ivf"
    scores, ids = index.search(query_side, k=10, exclude=history, params=SearchParams(k_prime=64))
    index.save("artifacts/my-index");  index = MolIndex.load("artifacts/my-index")

Shape symbols: ``B`` queries, ``N`` items, ``Pq``/``Px`` components, ``P = Pq * Px``, ``d`` dimension.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mol_core.errors import ConfigError, ShapeError
from mol_core.manifest import MANIFEST_FILENAME
from mol_core.similarity import DotProductSimilarity, ItemSide, MoLSimilarity, QuerySide, Similarity
from mol_index._inputs import Exclude, as_query_side, check_k, exclusion_tensor
from mol_index.adaptive import AdaptiveModel, build_adaptive_model, search_adaptive_model
from mol_index.artifact import KINDS, LoadedArtifact, read_artifact, write_artifact
from mol_index.candidates import STAGE_KINDS, CandidateStage, FaissStage, StageParams, TorchStage
from mol_index.index_layers import PQItemLayer
from mol_index.pq_index import PQCodes, encode_corpus, fit_codes, pq_search
from mol_index.rails import Algorithm, SearchResult, rails_search

if TYPE_CHECKING:
    from mol_index.hierarchical import HierarchicalIndex

__all__ = [
    "KERNELS",
    "MolIndex",
    "SearchParams",
    "build_adaptive",
    "build_from_arrays",
    "build_from_bundle",
    "build_hierarchical",
    "build_pq",
]

#: Index kinds whose search structure is learned (their candidate stage for RAILS is the torch GEMM).
_LEARNED = ("adaptive", "pq", "hierarchical")
#: Values of :attr:`SearchParams.kernel`.
KERNELS = ("auto", "torch", "triton")


@dataclass(frozen=True, kw_only=True)
class SearchParams:
    """How :meth:`MolIndex.search` finds the top-k.

    Attributes:
        algorithm: an :class:`Algorithm` or its value: ``exact`` scans the corpus; ``topk_per_embd``,
            ``topk_avg`` and ``comb_topk`` are the RAILS algorithms (candidates from the index's stage,
            exact MoL rerank); ``adaptive``, ``pq`` and ``hierarchical`` need an index of that kind.
        k_prime: ``K'``, candidates per (query component, item component) pair and for the mean; for
            ``pq``, candidates kept from the quantized scan (``max(k, K')``).
        k_prime_avg: candidates of the TopKAvg part (``topk_avg``, ``comb_topk``); ``None`` (default) uses
            ``k_prime``, as the paper does. One search over the mean embeddings, so a large value is cheap.
        guarantee_exact: widen ``K'`` until every result is provably exact (exact stages only).
        nprobe: IVF lists to visit (``faiss-ivf`` indexes; default ``max(8, round(sqrt(nlist) / 2))``).
        ef_search: HNSW beam width (``faiss-hnsw`` indexes; at least ``K'`` is used).
        block_size: items per block of the exact scan.
        budget: scorer calls per query of the ``adaptive`` algorithm (default ``max(k, 200)``, at most N).
        rounds: retrieve-score-refit rounds of the ``adaptive`` algorithm.
        beam: clusters kept per level by the ``hierarchical`` algorithm.
        rerank: ``pq`` only: rerank the quantized scan's ``max(k, K')`` candidates by exact MoL on the
            unquantized items. ``None`` (default) reranks codes fitted after training and not codes from a
            jointly trained layer, which return the top ``k`` of their decoded scores (the ranking the
            model trained on; ``K'`` unused).
        kernel: how the ``exact`` algorithm scans: ``torch`` (blockwise, any device), ``triton`` (the fused
            kernel of :mod:`mol_index.triton_topk`: MoL on CUDA, or on the CPU under
            ``TRITON_INTERPRET=1``), or ``auto`` (``triton`` when the index is on a CUDA device, Triton is
            installed and the similarity fits the kernel, else ``torch``). The RAILS algorithms ignore it.
    """

    algorithm: Algorithm | str = Algorithm.COMB_TOP_K
    k_prime: int = 64
    k_prime_avg: int | None = None
    guarantee_exact: bool = False
    nprobe: int | None = None
    ef_search: int | None = None
    block_size: int | None = None
    budget: int | None = None
    rounds: int = 5
    kernel: str = "auto"
    beam: int = 8
    rerank: bool | None = None

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ConfigError(f"unknown kernel {self.kernel!r}; expected one of {', '.join(KERNELS)}")
        try:
            object.__setattr__(self, "algorithm", Algorithm(self.algorithm))
        except ValueError as err:
            choices = ", ".join(a.value for a in Algorithm)
            raise ConfigError(f"unknown algorithm {self.algorithm!r}; expected one of {choices}") from err
        for name in (
            "k_prime",
            "k_prime_avg",
            "nprobe",
            "ef_search",
            "block_size",
            "budget",
            "rounds",
            "beam",
        ):
            value = getattr(self, name)
            if value is None and name not in ("k_prime", "rounds", "beam"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"SearchParams.{name} must be a positive integer; got {value!r}")


class MolIndex:
    """A searchable corpus: item side, external ids, the similarity and an optional FAISS stage.

    Build with :meth:`build` (or :func:`build_from_arrays`), persist with :meth:`save` / :meth:`load`.

    Args:
        similarity: scores (query, item) pairs; kept in ``eval()`` mode.
        item_ids: ``(N,)`` distinct non-negative int64 external ids.
        corpus: the ``(N, Px, d)`` item side (gating ``(N, P)`` for MoL).
        stage_kind: ``torch`` (GEMM candidates), ``flat``, ``ivf`` or ``hnsw`` (FAISS candidates).
        faiss_stage: the built FAISS stage, required unless ``stage_kind`` is ``torch``.
        parameters: build parameters recorded in the manifest.
        source_bundle_sha256: SHA-256 of the source model bundle's manifest.json ("" when built from
            arrays); saved in the index manifest.
        adaptive: the learned model of an ``adaptive`` index (``stage_kind="adaptive"``; see
            :func:`build_adaptive`).
        pq: the codes of a ``pq`` index (``stage_kind="pq"``; see :func:`build_pq`).
        hierarchical: the cluster tree of a ``hierarchical`` index (``stage_kind="hierarchical"``; see
            :func:`build_hierarchical`).
    """

    def __init__(
        self,
        similarity: Similarity,
        item_ids: torch.Tensor,
        corpus: ItemSide,
        *,
        stage_kind: str = "torch",
        faiss_stage: FaissStage | None = None,
        parameters: dict[str, str] | None = None,
        source_bundle_sha256: str = "",
        adaptive: AdaptiveModel | None = None,
        pq: PQCodes | None = None,
        hierarchical: HierarchicalIndex | None = None,
    ) -> None:
        self.similarity = similarity.eval()
        self.source_bundle_sha256 = source_bundle_sha256
        self.item_ids = _check_item_ids(item_ids, corpus.num_items)
        self.corpus = corpus
        self.stage_kind = stage_kind
        self.parameters = dict(parameters or {})
        for name, part in (("adaptive", adaptive), ("pq", pq), ("hierarchical", hierarchical)):
            if (stage_kind == name) != (part is not None):
                raise ConfigError(f"stage_kind {name!r} and its model go together (see build_{name})")
        self.adaptive = adaptive
        self.pq = pq
        self.hierarchical = hierarchical
        if stage_kind in ("torch", *_LEARNED):
            self._stage: CandidateStage = TorchStage(corpus.embeddings)
        elif faiss_stage is None:
            raise ConfigError(f"stage_kind {stage_kind!r} needs a built FaissStage")
        else:
            self._stage = faiss_stage
        self._faiss_stage = faiss_stage
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
    ) -> MolIndex:
        """Builds an index over ``N`` items.

        Args:
            similarity: a ``MoLSimilarity`` or ``DotProductSimilarity`` (the index stores its parameters).
            item_ids: ``(N,)`` distinct non-negative integer external ids.
            items: the ``(N, Px, d)`` item side, or ``(N, Dx)`` item representations that go through
                ``similarity.item_side``.
            stage: candidate stage: ``torch`` (exact GEMM, nothing to build), ``flat`` (FAISS exact),
                ``ivf`` or ``hnsw`` (FAISS approximate).
            nlist: IVF lists (default ``4 * sqrt(N)``, capped at ``N // 39``).
            hnsw_m: HNSW neighbours per node.
            ef_construction: HNSW build beam width.
            exact_mean: FAISS stages: index the mean item embeddings (the TopKAvg search) exactly with
                ``IndexFlatIP`` (default), or with the stage's own kind when False.

        Raises:
            ConfigError: unknown stage, duplicate or negative ids.
            ShapeError: ids and items disagree on ``N`` or the items do not fit the similarity.
        """
        if stage not in STAGE_KINDS:
            raise ConfigError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_KINDS)}")
        similarity = similarity.eval()
        if isinstance(items, torch.Tensor):
            with torch.inference_mode():
                items = similarity.item_side(items)
        emb = items.embeddings
        want = (similarity.num_item_components, similarity.component_dim)
        if emb.dim() != 3 or tuple(emb.shape[1:]) != want:
            raise ShapeError(
                f"item embeddings must have shape (N, Px={want[0]}, d={want[1]}); got {tuple(emb.shape)}"
            )
        num_p = similarity.num_components
        if items.gating is None and not isinstance(similarity, DotProductSimilarity):
            raise ShapeError(f"item gating features of shape (N, P={num_p}) are required for this similarity")
        if items.gating is not None and tuple(items.gating.shape) != (emb.shape[0], num_p):
            raise ShapeError(
                f"item gating must have shape (N={emb.shape[0]}, P={num_p}); got {tuple(items.gating.shape)}"
            )
        corpus = ItemSide(
            emb.detach().float().contiguous(),
            None if items.gating is None else items.gating.detach().float().contiguous(),
        )
        ids = _check_item_ids(torch.as_tensor(item_ids), corpus.num_items)  # before any expensive build
        parameters: dict[str, str] = {}
        faiss_stage = None
        if stage != "torch":
            faiss_stage = FaissStage.build(
                stage,
                corpus.embeddings,
                nlist=nlist,
                hnsw_m=hnsw_m,
                ef_construction=ef_construction,
                exact_mean=exact_mean,
            )
            parameters["mean_index"] = "flat" if exact_mean else stage
            if stage == "ivf":
                parameters["nlist"] = str(faiss_stage.nlist)
            if stage == "hnsw":
                parameters |= {"hnsw_m": str(hnsw_m), "ef_construction": str(ef_construction)}
        return cls(
            similarity,
            ids,
            corpus,
            stage_kind=stage,
            faiss_stage=faiss_stage,
            parameters=parameters,
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
            faiss_stage=self._faiss_stage,
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
        """Loads an artifact written by :meth:`save`, verifying format version and checksums first.

        Raises:
            ArtifactError: missing, corrupt, or of another format version or kind.
        """
        return cls.from_artifact(read_artifact(path))

    @classmethod
    def from_artifact(cls, art: LoadedArtifact) -> MolIndex:
        """The index of an artifact already read (and checked) by :func:`mol_index.artifact.read_artifact`,
        for callers that also need its manifest (index version, kind)."""
        return cls(
            art.similarity,
            art.item_ids,
            art.corpus,
            stage_kind=art.stage_kind,
            faiss_stage=art.faiss_stage,
            parameters=dict(art.manifest.parameters),
            source_bundle_sha256=art.manifest.source_bundle_sha256,
            adaptive=art.adaptive,
            pq=art.pq,
            hierarchical=art.hierarchical,
        )

    # ------------------------------------------------------------------ search

    @property
    def num_items(self) -> int:
        """``N``."""
        return self.corpus.num_items

    @property
    def faiss_stage(self) -> FaissStage | None:
        """The FAISS candidate stage, or ``None`` for a ``torch``-stage index."""
        return self._faiss_stage

    @property
    def device(self) -> torch.device:
        """Where the corpus lives and searches run (queries are moved here)."""
        return self.corpus.embeddings.device

    def to(self, device: torch.device | str) -> MolIndex:
        """Moves the similarity, corpus and id tables to ``device`` (in place) and returns ``self``.

        Results of :meth:`search` are then on ``device`` too. Only ``torch``-stage (exact) indexes move
        off the CPU: FAISS stages here are CPU indexes.

        Raises:
            ConfigError: a FAISS-stage index asked to leave the CPU.
        """
        target = torch.device(device)
        if target.type != "cpu" and self._faiss_stage is not None:
            raise ConfigError(
                f"a {self.kind} index runs its FAISS stage on the CPU and cannot move to {target}; "
                "build a torch-stage (exact) index to search on a GPU"
            )
        self.similarity = self.similarity.to(target)
        self.corpus = self.corpus.to(target)
        self.item_ids = self.item_ids.to(target)
        self._sorted_ids, self._order = self._sorted_ids.to(target), self._order.to(target)
        if self._faiss_stage is None:
            self._stage = TorchStage(self.corpus.embeddings)
        if self.adaptive is not None:
            self.adaptive = self.adaptive.to(target)
        if self.pq is not None:
            self.pq = self.pq.to(target)
        if self.hierarchical is not None:
            self.hierarchical = self.hierarchical.to(target)
        return self

    @property
    def kind(self) -> str:
        """The artifact kind: ``exact``, ``faiss-flat``, ``faiss-ivf``, ``faiss-hnsw``, ``adaptive``, ``pq``
        or ``hierarchical``."""
        return KINDS[self.stage_kind]

    def search(
        self,
        queries: QuerySide | torch.Tensor,
        k: int,
        *,
        gating: torch.Tensor | None = None,
        exclude: Exclude | None = None,
        params: SearchParams | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top ``k`` items per query: ``(scores, ids)``, both ``(B, k)``, in the FAISS style.

        Args:
            queries: a ``QuerySide``, ``(B, Pq, d)`` query component embeddings (pass ``gating``
                ``(B, P)`` for MoL), or ``(B, d)`` query vectors for a dot-product index.
            k: results per query, ``1 <= k <= N``.
            gating: ``(B, P)`` query gating features when ``queries`` is a tensor.
            exclude: external item ids to leave out per query (e.g. the history): a ``(B, L)`` int tensor
                padded with ``-1`` or ``B`` lists; ids not in the index are ignored.
            params: algorithm and knobs; default :class:`SearchParams` (CombTopK, ``K' = 64``).

        Returns:
            ``(B, k)`` float32 scores, descending, and ``(B, k)`` int64 external ids; ``-inf`` / ``-1``
            where fewer than ``k`` items remain.

        Raises:
            ShapeError: queries that do not fit the similarity (wrong ``Pq``, ``d`` or missing gating).
            ConfigError: ``k`` not in ``[1, N]``, or bad params.
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
        params: SearchParams | None = None,
    ) -> SearchResult:
        """Like :meth:`search`, returning a :class:`~mol_index.rails.SearchResult` with per-query
        exactness flags, candidate counts and the ``K'`` used; ``ids`` are external ids."""
        params = params or SearchParams()
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
            if params.algorithm is Algorithm.EXACT and self._use_triton(params.kernel):
                res = self._triton_exact(query, k, rows_excluded)
            elif params.algorithm is Algorithm.ADAPTIVE:
                res = self._adaptive(query, k, rows_excluded, params)
            elif params.algorithm is Algorithm.PQ:
                res = self._pq(query, k, rows_excluded, params)
            elif params.algorithm is Algorithm.HIERARCHICAL:
                res = self._hierarchical(query, k, rows_excluded, params)
            else:
                res = rails_search(
                    self.similarity,
                    query,
                    self.corpus,
                    k,
                    self._stage,
                    algorithm=Algorithm(params.algorithm),
                    k_prime=params.k_prime,
                    k_prime_avg=params.k_prime_avg,
                    exclude=rows_excluded,
                    guarantee_exact=params.guarantee_exact,
                    stage_params=StageParams(nprobe=params.nprobe, ef_search=params.ef_search),
                    block_size=params.block_size,
                )
        ids = torch.where(res.ids >= 0, self.item_ids[res.ids.clamp_min(0)], torch.full_like(res.ids, -1))
        return SearchResult(res.scores, ids, res.exact, res.num_candidates, res.k_prime)

    def _adaptive(
        self, query: QuerySide, k: int, rows_excluded: torch.Tensor | None, params: SearchParams
    ) -> SearchResult:
        if self.adaptive is None:
            raise ConfigError(
                f"algorithm 'adaptive' needs an index of kind 'adaptive' (this one is {self.kind!r}); "
                "build one with mol_index.build_adaptive or `mol-index build --kind adaptive`"
            )
        check_k(k, self.num_items)
        budget = min(self.num_items, params.budget or max(k, 200))
        if params.budget is not None and params.budget < params.rounds:
            raise ConfigError(
                f"budget {params.budget} is below one scorer call per round ({params.rounds} rounds); "
                "raise budget or lower rounds"
            )
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

    def add_items(self, item_ids: torch.Tensor, items: ItemSide) -> None:
        """Adds items to a ``hierarchical`` index without a rebuild: each goes to its nearest leaf cluster
        (the clusters do not move); every algorithm finds them from then on.

        Args:
            item_ids: ``(n,)`` new external ids, distinct and not in the index (removed ids included).
            items: their ``(n, Px, d)`` item side (``(n, P)`` gating for MoL).

        Raises:
            ConfigError: not a ``hierarchical`` index, or ids that are duplicated, negative or taken.
            ShapeError: items of another shape than the corpus.
        """
        tree = self._tree("add_items")
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
        _check_item_ids(ids, n)
        rows = tree.add(items)  # checks the shapes first
        device = self.device
        gating = None
        if self.corpus.gating is not None and items.gating is not None:
            gating = torch.cat([self.corpus.gating, items.gating.to(device, self.corpus.gating.dtype)])
        embeddings = items.embeddings.to(device, self.corpus.embeddings.dtype)
        self.corpus = ItemSide(torch.cat([self.corpus.embeddings, embeddings]), gating)
        self.item_ids = torch.cat([self.item_ids, ids.to(device)])
        if int(rows[0]) != self.corpus.num_items - n:
            raise RuntimeError("the cluster tree and the corpus disagree on row numbers")
        self._stage = TorchStage(self.corpus.embeddings)
        self._sorted_ids, self._order = torch.sort(self.item_ids)

    def remove_items(self, item_ids: torch.Tensor | list[int]) -> None:
        """Removes items from a ``hierarchical`` index without a rebuild: no algorithm returns them again.

        Raises:
            ConfigError: not a ``hierarchical`` index, or an id that is not in it.
        """
        tree = self._tree("remove_items")
        ids = torch.as_tensor(item_ids, dtype=torch.int64, device=self.device).reshape(1, -1)
        rows = self._rows_of(ids)
        if rows is None or bool((rows < 0).any()):
            missing = ids if rows is None else ids[rows < 0]
            raise ConfigError(f"ids {missing.tolist()[:10]} are not in the index")
        tree.remove(rows.reshape(-1))

    def _tree(self, action: str) -> HierarchicalIndex:
        if self.hierarchical is None:
            raise ConfigError(
                f"{action} needs an index of kind 'hierarchical' (this one is {self.kind!r}); indexes of "
                "other kinds are rebuilt to change their items"
            )
        return self.hierarchical

    def _with_removed(self, rows_excluded: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Adds the removed rows of a hierarchical index to every query's ``(B, L)`` exclusions."""
        if self.hierarchical is None or not bool(self.hierarchical.removed.any()):
            return rows_excluded
        removed = self.hierarchical.removed.nonzero().reshape(1, -1).to(self.device)  # (1, R)
        removed = removed.expand(batch, -1)  # (B, R)
        return removed if rows_excluded is None else torch.cat([rows_excluded, removed], dim=1)

    def _pq(
        self, query: QuerySide, k: int, rows_excluded: torch.Tensor | None, params: SearchParams
    ) -> SearchResult:
        if self.pq is None:
            raise ConfigError(
                f"algorithm 'pq' needs an index of kind 'pq' (this one is {self.kind!r}); build one with "
                "mol_index.build_pq or `mol-index build --kind pq`"
            )
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

    def _hierarchical(
        self, query: QuerySide, k: int, rows_excluded: torch.Tensor | None, params: SearchParams
    ) -> SearchResult:
        if self.hierarchical is None:
            raise ConfigError(
                "algorithm 'hierarchical' needs an index of kind 'hierarchical' "
                f"(this one is {self.kind!r}); build one with mol_index.build_hierarchical or "
                "`mol-index build --kind hierarchical`"
            )
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

    def _use_triton(self, kernel: str) -> bool:
        """Whether the exact scan runs the fused Triton kernel (see :attr:`SearchParams.kernel`)."""
        if kernel == "torch" or (kernel == "auto" and self.device.type != "cuda"):
            return False
        from mol_index import triton_topk

        reason = triton_topk.unsupported_reason(self.similarity)
        if kernel == "triton" and reason is not None:
            raise ConfigError(f"kernel='triton' cannot search this index: {reason}")
        return reason is None

    def _triton_exact(self, query: QuerySide, k: int, rows_excluded: torch.Tensor | None) -> SearchResult:
        from mol_index.triton_topk import triton_exact_search

        assert isinstance(self.similarity, MoLSimilarity)  # checked by _use_triton
        scores, rows = triton_exact_search(self.similarity, query, self.corpus, k, exclude=rows_excluded)
        batch, device = query.batch_size, query.embeddings.device
        everything = torch.full((batch,), self.num_items, dtype=torch.int64, device=device)
        exact = torch.ones(batch, dtype=torch.bool, device=device)
        return SearchResult(scores, rows, exact, everything, everything.clone())

    def _rows_of(self, ids: torch.Tensor | None) -> torch.Tensor | None:
        """``(B, L)`` external ids -> corpus rows; unknown ids and padding become ``-1``."""
        if ids is None:
            return None
        pos = torch.searchsorted(self._sorted_ids, ids).clamp(max=self.num_items - 1)  # (B, L)
        found = (self._sorted_ids[pos] == ids) & (ids >= 0)  # (B, L)
        return torch.where(found, self._order[pos], torch.full_like(ids, -1))


def build_from_arrays(
    similarity: Similarity,
    item_ids: torch.Tensor,
    items: ItemSide | torch.Tensor,
    *,
    stage: str = "torch",
    nlist: int | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    exact_mean: bool = True,
) -> MolIndex:
    """Builds a :class:`MolIndex` from in-memory arrays; the same as :meth:`MolIndex.build`."""
    return MolIndex.build(
        similarity,
        item_ids,
        items,
        stage=stage,
        nlist=nlist,
        hnsw_m=hnsw_m,
        ef_construction=ef_construction,
        exact_mean=exact_mean,
    )


def build_from_bundle(
    bundle_path: str | Path,
    *,
    stage: str = "torch",
    nlist: int | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    exact_mean: bool = True,
) -> MolIndex:
    """Builds a :class:`MolIndex` over every item of a mol-train model bundle (``mol_core.bundle``).

    The bundle's precomputed item side and similarity are used as they are; its item vocabulary gives the
    external ids, which must be integers (the wire format of mol-serve carries int64 ids). The index
    records the SHA-256 of the bundle's manifest.json (``source_bundle_sha256``).

    Raises:
        ArtifactError: the bundle is missing, corrupt or of another format version.
        ConfigError: the vocabulary holds ids that are not integers.
    """
    from mol_core.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in bundle.item_ids):
        raise ConfigError(
            f"{bundle_path}: the bundle's item vocabulary holds non-integer ids; mol-index needs integer ids"
        )
    index = MolIndex.build(
        bundle.similarity,
        torch.tensor(bundle.item_ids, dtype=torch.int64),
        bundle.items,
        stage=stage,
        nlist=nlist,
        hnsw_m=hnsw_m,
        ef_construction=ef_construction,
        exact_mean=exact_mean,
    )
    index.source_bundle_sha256 = hashlib.sha256(
        (Path(bundle_path) / MANIFEST_FILENAME).read_bytes()
    ).hexdigest()
    return index


def _check_item_ids(item_ids: torch.Tensor, num_items: int) -> torch.Tensor:
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


def build_pq(
    index: MolIndex,
    *,
    layer: PQItemLayer | None = None,
    coarse: int = 1,
    subspaces: int = 8,
    codebook_size: int = 256,
    iterations: int = 20,
) -> MolIndex:
    """A ``pq`` index over the items and similarity of ``index``.

    With ``layer`` (a PQ layer trained jointly with the model, e.g. from
    :func:`mol_index.index_layers.layer_from_bundle`) every item is encoded with it, with no k-means; without
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
    return MolIndex(
        index.similarity,
        index.item_ids,
        index.corpus,
        stage_kind="pq",
        parameters={"bytes_per_item": repr(codes.bytes_per_item())},
        source_bundle_sha256=index.source_bundle_sha256,
        pq=codes,
    )


def build_hierarchical(
    index: MolIndex,
    *,
    layer: torch.nn.Module | None = None,
    branching: tuple[int, ...] = (16, 8),
    iterations: int = 20,
    seed: int = 0,
) -> MolIndex:
    """A ``hierarchical`` index (HSNN, :mod:`mol_index.hierarchical`) over the items of ``index``.

    With ``layer`` (a :class:`~mol_index.hierarchical.HierarchicalLayer` trained with the model) the items
    are assigned to its learned clusters, with no k-means; without it the tree is built by top-down k-means
    with ``branching`` clusters per level.

    Raises:
        ConfigError: too few items for the first level, or a bad branching.
    """
    from mol_index.hierarchical import HierarchicalIndex

    if layer is not None:
        tree = layer.export_index(index.corpus)  # type: ignore[operator]
        parameters = {"source": "joint"}
    else:
        tree = HierarchicalIndex.build(index.corpus, tuple(branching), iterations=iterations, seed=seed)
        parameters = {"source": "kmeans", "branching": ",".join(str(b) for b in branching)}
    return MolIndex(
        index.similarity,
        index.item_ids,
        index.corpus,
        stage_kind="hierarchical",
        parameters=parameters,
        source_bundle_sha256=index.source_bundle_sha256,
        hierarchical=tree,
    )


def build_adaptive(
    index: MolIndex,
    train_queries: QuerySide,
    *,
    per_query: int = 100,
    reg: float = 1000.0,
    iterations: int = 10,
) -> MolIndex:
    """An ``adaptive`` index (AXN, :mod:`mol_index.adaptive`) over the items and similarity of ``index``.

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
    return MolIndex(
        index.similarity,
        index.item_ids,
        index.corpus,
        stage_kind="adaptive",
        parameters=parameters,
        source_bundle_sha256=index.source_bundle_sha256,
        adaptive=model,
    )
