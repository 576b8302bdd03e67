"""Search parameters: one class per algorithm (as FAISS's ``SearchParametersIVF`` / ``...HNSW``), and the
request form that names an algorithm with its knobs.

Every index kind takes :class:`ExactParams`, :class:`RailsParams` and :class:`LinearizedParams` (each kind
keeps the whole item side; the linearized search needs a stage with a concatenated-components index) and
its own class: :class:`PQParams` (``pq``), :class:`HierarchicalParams` (``hierarchical``),
:class:`AdaptiveParams` (``adaptive``). :class:`SearchParams` is one request as mol-serve's wire and the
CLI carry it (an algorithm name and the knobs of every algorithm); :meth:`SearchParams.resolve` turns it
into the algorithm's own class.
"""

from __future__ import annotations

from dataclasses import dataclass

from mol_core.errors import ConfigError
from mol_core.settings import check_settings, setting
from mol_index.search.rails import Algorithm

__all__ = [
    "KERNELS",
    "RAILS_ALGORITHMS",
    "AdaptiveParams",
    "AlgorithmParams",
    "ExactParams",
    "HierarchicalParams",
    "LinearizedParams",
    "PQParams",
    "RailsParams",
    "SearchParams",
]

#: Values of :attr:`ExactParams.kernel`.
KERNELS = ("auto", "torch", "torch-bf16", "cpu", "triton")
#: The RAILS algorithms of :class:`RailsParams`.
RAILS_ALGORITHMS = (Algorithm.TOP_K_PER_EMBD, Algorithm.TOP_K_AVG, Algorithm.COMB_TOP_K)


@dataclass(frozen=True, kw_only=True)
class ExactParams:
    """Exact top-k: a scan of the whole corpus (any index kind).

    Attributes:
        block_size: items per block of the torch scan (default: chosen by the scan).
        kernel: ``torch`` (blockwise, any device), ``torch-bf16`` (the same scan with its scores computed in
            bf16 under autocast: only on request, as it may change the ranking; fast where the device
            multiplies bf16 natively), ``cpu`` (the fused C++ kernel of
            :mod:`mol_index.kernels.mol_cpu`: MoL on an x86-64 CPU with AVX2 and FMA, compiled on first use),
            ``triton`` (the fused kernel of :mod:`mol_index.kernels.triton_topk`: MoL on CUDA, or on the CPU
            under ``TRITON_INTERPRET=1``), or ``auto`` (``triton`` when the index is on a CUDA device, Triton
            is installed and the similarity fits the kernel; ``cpu`` when the index is on the CPU and the
            C++ kernel builds and fits; else ``torch``).
    """

    block_size: int | None = setting(None, minimum=1)
    kernel: str = setting("auto", choices=KERNELS)

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def algorithm(self) -> Algorithm:
        """:attr:`Algorithm.EXACT`."""
        return Algorithm.EXACT


@dataclass(frozen=True, kw_only=True)
class RailsParams:
    """RAILS (any index kind): candidates from the index's stage, exact MoL rerank, the exactness bound.

    Attributes:
        algorithm: ``topk_per_embd``, ``topk_avg`` or ``comb_topk`` (:data:`RAILS_ALGORITHMS`).
        k_prime: ``K'``, candidates per (query component, item component) pair and for the mean.
        k_prime_avg: candidates of the TopKAvg part (``topk_avg``, ``comb_topk``); ``None`` uses ``k_prime``.
        guarantee_exact: widen ``K'`` until every result is provably exact (exact stages only).
        nprobe: IVF lists to visit (``faiss-ivf`` indexes; default ``max(8, round(sqrt(nlist) / 2))``).
        ef_search: HNSW beam width (``faiss-hnsw`` indexes; at least ``K'`` is used).
        block_size: items per block of the exact rerank scan.
    """

    algorithm: Algorithm | str = setting(Algorithm.COMB_TOP_K, choices=RAILS_ALGORITHMS)
    k_prime: int = setting(64, minimum=1)
    k_prime_avg: int | None = setting(None, minimum=1)
    guarantee_exact: bool = False
    nprobe: int | None = setting(None, minimum=1)
    early_nprobe: int | None = setting(None, minimum=1)
    ef_search: int | None = setting(None, minimum=1)
    block_size: int | None = setting(None, minimum=1)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, kw_only=True)
class LinearizedParams:
    """The linearized search (:mod:`mol_index.search.linearized`): TopKAvg candidates, then ``rounds`` of a
    per-query least-squares linear proxy searched over the concatenated item components, exact scoring.

    Attributes:
        k_prime: items taken from the concatenated-components index per round.
        k_prime_avg: TopKAvg candidates scored first (the first fit's sample).
        rounds: fit-and-search rounds.
        nprobe: IVF lists to visit in the concatenated index (``faiss-ivf`` indexes); default four times the
            index's default, 128 at N = 1e6. The TopKAvg search of the mean index visits the index's default.
        early_nprobe: IVF lists the concatenated-index searches of every round but the last visit (their
            candidates only widen the next fit's sample); ``None`` (default): ``nprobe``.
        ef_search: HNSW beam width (``faiss-hnsw`` indexes; at least ``K'`` is used).

    The defaults are the setting measured at N = 1e6 in docs/mol-index.md ("Linearized search").
    """

    k_prime: int = setting(2000, minimum=1)
    k_prime_avg: int = setting(2000, minimum=1)
    rounds: int = setting(2, minimum=1)
    nprobe: int | None = setting(None, minimum=1)
    early_nprobe: int | None = setting(None, minimum=1)
    ef_search: int | None = setting(None, minimum=1)

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def algorithm(self) -> Algorithm:
        """:attr:`Algorithm.LINEARIZED`."""
        return Algorithm.LINEARIZED


@dataclass(frozen=True, kw_only=True)
class PQParams:
    """Search of a ``pq`` index: a scan of the quantized items.

    Attributes:
        k_prime: candidates kept from the quantized scan (``max(k, K')``) for the rerank.
        rerank: rerank those candidates by exact MoL on the unquantized items. ``None`` (default) reranks
            codes fitted after training and not codes from a jointly trained layer, which return the top
            ``k`` of their decoded scores (the ranking the model trained on; ``K'`` unused).
    """

    k_prime: int = setting(64, minimum=1)
    rerank: bool | None = None

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def algorithm(self) -> Algorithm:
        """:attr:`Algorithm.PQ`."""
        return Algorithm.PQ


@dataclass(frozen=True, kw_only=True)
class HierarchicalParams:
    """Search of a ``hierarchical`` index: top-down beam search through the clusters.

    Attributes:
        beam: clusters kept per level.
    """

    beam: int = setting(8, minimum=1)

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def algorithm(self) -> Algorithm:
        """:attr:`Algorithm.HIERARCHICAL`."""
        return Algorithm.HIERARCHICAL


@dataclass(frozen=True, kw_only=True)
class AdaptiveParams:
    """Search of an ``adaptive`` index (AXN): retrieve, score, refit the query, repeat.

    Attributes:
        budget: scorer calls per query (default ``max(k, 200)``, at most N).
        rounds: retrieve-score-refit rounds (at most ``budget``).
    """

    budget: int | None = setting(None, minimum=1)
    rounds: int = setting(5, minimum=1)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.budget is not None and self.budget < self.rounds:
            raise ConfigError(
                f"budget {self.budget} is below one scorer call per round ({self.rounds} rounds); "
                "raise budget or lower rounds"
            )

    @property
    def algorithm(self) -> Algorithm:
        """:attr:`Algorithm.ADAPTIVE`."""
        return Algorithm.ADAPTIVE


AlgorithmParams = (
    ExactParams | RailsParams | LinearizedParams | PQParams | HierarchicalParams | AdaptiveParams
)


@dataclass(frozen=True, kw_only=True)
class SearchParams:
    """One search request: an algorithm by name and the knobs of every algorithm (mol-serve's wire form).

    Each knob applies to some algorithms (see the classes it resolves to) and is ignored by the others.

    Attributes:
        algorithm: an :class:`~mol_index.search.rails.Algorithm` or its value.
        k_prime, k_prime_avg, guarantee_exact, nprobe, ef_search: :class:`RailsParams`; ``k_prime`` also
            :class:`PQParams`.
        block_size: :class:`ExactParams`, :class:`RailsParams`.
        kernel: :class:`ExactParams`.
        budget, rounds: :class:`AdaptiveParams`; ``k_prime``, ``k_prime_avg`` (default ``k_prime``),
            ``rounds``, ``nprobe`` and ``ef_search`` also :class:`LinearizedParams`.
        early_nprobe: :class:`LinearizedParams`.
        beam: :class:`HierarchicalParams`.
        rerank: :class:`PQParams`.
    """

    algorithm: Algorithm | str = Algorithm.COMB_TOP_K
    k_prime: int = setting(64, minimum=1)
    k_prime_avg: int | None = setting(None, minimum=1)
    guarantee_exact: bool = False
    nprobe: int | None = setting(None, minimum=1)
    early_nprobe: int | None = setting(None, minimum=1)
    ef_search: int | None = setting(None, minimum=1)
    block_size: int | None = setting(None, minimum=1)
    budget: int | None = setting(None, minimum=1)
    rounds: int = setting(5, minimum=1)
    kernel: str = setting("auto", choices=KERNELS)
    beam: int = setting(8, minimum=1)
    rerank: bool | None = None

    def __post_init__(self) -> None:
        check_settings(self)
        self.resolve()  # the algorithm's own checks, now rather than at search time

    def resolve(self) -> AlgorithmParams:
        """The algorithm's own parameters, with this request's knobs for it.

        Raises:
            ConfigError: a knob out of range.
        """
        algorithm = Algorithm(self.algorithm)
        if algorithm is Algorithm.EXACT:
            return ExactParams(block_size=self.block_size, kernel=self.kernel)
        if algorithm is Algorithm.PQ:
            return PQParams(k_prime=self.k_prime, rerank=self.rerank)
        if algorithm is Algorithm.HIERARCHICAL:
            return HierarchicalParams(beam=self.beam)
        if algorithm is Algorithm.ADAPTIVE:
            return AdaptiveParams(budget=self.budget, rounds=self.rounds)
        if algorithm is Algorithm.LINEARIZED:
            return LinearizedParams(
                k_prime=self.k_prime,
                k_prime_avg=self.k_prime_avg or self.k_prime,
                rounds=self.rounds,
                nprobe=self.nprobe,
                early_nprobe=self.early_nprobe,
                ef_search=self.ef_search,
            )
        return RailsParams(
            algorithm=algorithm,
            k_prime=self.k_prime,
            k_prime_avg=self.k_prime_avg,
            guarantee_exact=self.guarantee_exact,
            nprobe=self.nprobe,
            ef_search=self.ef_search,
            block_size=self.block_size,
        )
