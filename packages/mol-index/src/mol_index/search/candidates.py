"""Candidate stages of the RAILS algorithms: cheap per-component MIPS over the item components.

A stage answers two questions for a batch of queries:

- :meth:`CandidateStage.per_component`: for every query component ``a`` and item component ``b``, the
  top ``K'`` items by ``<f_a(q), g_b(x)>`` (TopKPerEmbd);
- :meth:`CandidateStage.mean`: the top ``K'`` items by ``<mean_a f_a(q), mean_b g_b(x)>`` (TopKAvg);
- :meth:`CandidateStage.concatenated`: the top ``K'`` items by ``<u, v(x)>`` over the linearized item
  vectors (:func:`linearized_item_vectors`), for the linearized search.

:class:`TorchStage` computes both exactly with blockwise GEMMs over the corpus. :class:`FaissStage` keeps
one FAISS index per item component ``b`` (queried with all ``Pq`` query components) plus one over the mean
item embeddings; ``flat`` (``IndexFlatIP``) is exact, ``ivf`` and ``hnsw`` are approximate. The mean index
is exact (``IndexFlatIP``) by default whatever the kind: it is searched once per query where the component
indexes are searched ``Pq * Px`` times (its measured effect on recall: docs/mol-index.md). Only an exact
component stage lets the exactness bound prove a result
exact (``CandidateStage.exact``).

Values are raw inner products (not divided by the temperature); missing results (an approximate index
that found fewer than ``K'`` items) have value ``-inf`` and row ``-1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
import torch

from mol_core.errors import ArtifactError, ConfigError

__all__ = [
    "STAGE_KINDS",
    "CandidateStage",
    "FaissStage",
    "StageParams",
    "TorchStage",
    "linearized_item_vectors",
]

#: Candidate stages by name: ``torch`` (exact, no extra files) and the FAISS ones.
STAGE_KINDS = ("torch", "flat", "ivf", "hnsw")

#: The concatenated-components index file of a FAISS stage (built for the linearized search).
_CONCATENATED_FILE = "faiss/concatenated.faiss"
#: Inner products computed per GEMM block of the torch stage (about 16 MB of float32).
_TORCH_BLOCK_VALUES = 1 << 22


@dataclass(frozen=True, kw_only=True)
class StageParams:
    """Search-time knobs of approximate FAISS stages (ignored by exact stages).

    Attributes:
        nprobe: IVF lists visited per search (default ``max(8, round(sqrt(nlist) / 2))``, 32 for the
            default ``nlist`` at N = 1e6; more is slower and finds more).
        ef_search: HNSW search beam width (default: FAISS's, 16; raised to at least ``K'``).
    """

    nprobe: int | None = None
    ef_search: int | None = None


class CandidateStage(Protocol):
    """What the RAILS algorithms need from a candidate stage (see the module docstring)."""

    @property
    def exact(self) -> bool:
        """True when the stage returns the exact top ``K'`` (then the exactness bound holds)."""
        ...

    def per_component(
        self, queries: torch.Tensor, k_prime: int, params: StageParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, Pq, d)`` query components -> values and rows ``(B, Pq, Px, K')``, values descending."""
        ...

    def mean(
        self, queries: torch.Tensor, k_prime: int, params: StageParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, d)`` mean query components -> values and rows ``(B, K')``, values descending."""
        ...

    @property
    def linearized_width(self) -> int:
        """Width ``F`` of the item vectors the concatenated search ranks (:func:`linearized_item_vectors`):
        ``Px * d``, or ``Px * d + P`` with the item gating features; 0 when the stage has no such index."""
        ...

    def concatenated(
        self, queries: torch.Tensor, k_prime: int, params: StageParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, F)`` query vectors -> the top ``K'`` rows by ``<u, v(x)>`` over the linearized item
        vectors ``v(x)`` (:func:`linearized_item_vectors`): values and rows ``(B, K')``, values descending
        (the linearized search, :mod:`mol_index.search.linearized`)."""
        ...


def linearized_item_vectors(item_embeddings: torch.Tensor, item_gating: torch.Tensor | None) -> torch.Tensor:
    """``(N, F)`` float32 vectors of the linearized search: the concatenated components
    ``concat_b g_b(x)`` (``Px * d``), followed by the item gating features ``(N, P)`` when given."""
    parts = [item_embeddings.detach().float().reshape(item_embeddings.shape[0], -1)]
    if item_gating is not None:
        parts.append(item_gating.detach().float())
    return torch.cat(parts, dim=1)


def _running_topk(
    best: tuple[torch.Tensor, torch.Tensor] | None, values: torch.Tensor, rows: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merges ``(..., n)`` values and rows into a running ``(..., <=k)`` top-k along the last dimension."""
    if best is not None:
        values = torch.cat([best[0], values], dim=-1)
        rows = torch.cat([best[1], rows], dim=-1)
    top = torch.topk(values, min(k, values.shape[-1]), dim=-1)  # (..., k)
    return top.values, rows.gather(-1, top.indices)


class TorchStage:
    """Exact candidate stage by blockwise torch GEMMs over the ``(N, Px, d)`` item components.

    Args:
        item_embeddings: ``(N, Px, d)`` item component embeddings.
        item_gating: ``(N, P)`` item gating features, or None; with them the concatenated search ranks
            :func:`linearized_item_vectors` with gating (no copy of the items is made).
    """

    def __init__(self, item_embeddings: torch.Tensor, item_gating: torch.Tensor | None = None) -> None:
        self.items = item_embeddings  # (N, Px, d)
        self.mean_items = item_embeddings.mean(dim=1)  # (N, d)
        self.concatenated_items = item_embeddings.reshape(item_embeddings.shape[0], -1)  # (N, Px * d)
        self.item_gating = item_gating  # (N, P) or None

    @property
    def linearized_width(self) -> int:
        """``Px * d``, plus ``P`` with item gating features; see :class:`CandidateStage`."""
        extra = 0 if self.item_gating is None else self.item_gating.shape[1]
        return int(self.concatenated_items.shape[1]) + extra

    @property
    def exact(self) -> bool:
        """Always True: every inner product is computed."""
        return True

    def per_component(
        self, queries: torch.Tensor, k_prime: int, params: StageParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``K'`` rows per (query component, item component); see :class:`CandidateStage`."""
        batch, num_q, dim = queries.shape
        num_items, num_x, _ = self.items.shape
        flat_q = queries.reshape(batch * num_q, dim)  # (B*Pq, d)
        block = max(k_prime, _TORCH_BLOCK_VALUES // max(1, batch * num_q * num_x))
        best: tuple[torch.Tensor, torch.Tensor] | None = None
        for start in range(0, num_items, block):
            stop = min(start + block, num_items)
            items = self.items[start:stop].reshape(-1, dim)  # (n*Px, d)
            ip = (flat_q @ items.T).view(batch * num_q, stop - start, num_x).transpose(1, 2)  # (B*Pq, Px, n)
            top = torch.topk(ip, min(k_prime, stop - start), dim=-1)  # (B*Pq, Px, k')
            best = _running_topk(best, top.values, top.indices + start, k_prime)
        if best is None:
            raise ConfigError("the corpus is empty")
        values, rows = best
        return values.view(batch, num_q, num_x, -1), rows.view(batch, num_q, num_x, -1)

    def mean(
        self, queries: torch.Tensor, k_prime: int, params: StageParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``K'`` rows by ``<mean f, mean g>``; see :class:`CandidateStage`."""
        return _blockwise_mips(queries, self.mean_items, k_prime)

    def concatenated(
        self, queries: torch.Tensor, k_prime: int, params: StageParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``K'`` rows by ``<u, v(x)>``; see :class:`CandidateStage`.

        Raises:
            ConfigError: ``queries`` is not ``linearized_width`` wide.
        """
        if queries.shape[-1] != self.linearized_width:
            raise ConfigError(
                f"linearized query vectors must be {self.linearized_width} wide; got {queries.shape[-1]}"
            )
        width = self.concatenated_items.shape[1]
        queries = queries.to(self.concatenated_items.dtype)
        if self.item_gating is None:
            return _blockwise_mips(queries, self.concatenated_items, k_prime)
        return _blockwise_mips(
            queries[:, :width], self.concatenated_items, k_prime, queries[:, width:], self.item_gating
        )


def _blockwise_mips(
    queries: torch.Tensor,
    vectors: torch.Tensor,
    k_prime: int,
    extra_queries: torch.Tensor | None = None,
    extra_vectors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top ``K'`` of ``(B, D)`` queries over ``(N, D)`` vectors by inner product, blockwise; with
    ``(B, E)`` ``extra_queries`` and ``(N, E)`` ``extra_vectors`` the inner product is over both parts."""
    num_items = vectors.shape[0]
    block = max(k_prime, _TORCH_BLOCK_VALUES // max(1, queries.shape[0]))
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    for start in range(0, num_items, block):
        stop = min(start + block, num_items)
        ip = queries @ vectors[start:stop].T  # (B, n)
        if extra_queries is not None and extra_vectors is not None:
            ip += extra_queries @ extra_vectors[start:stop].to(extra_queries.dtype).T
        top = torch.topk(ip, min(k_prime, stop - start), dim=-1)  # (B, k')
        best = _running_topk(best, top.values, top.indices + start, k_prime)
    if best is None:
        raise ConfigError("the corpus is empty")
    return best


def _new_faiss_index(
    kind: str,
    vectors: np.ndarray,
    *,
    nlist: int,
    hnsw_m: int,
    ef_construction: int,
    max_points_per_centroid: int = 256,
    ivf_fp16: bool = False,
) -> faiss.Index:
    dim = vectors.shape[1]
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        if ivf_fp16:  # the lists hold float16 vectors: half the bytes to scan, ranks barely change
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = max_points_per_centroid  # k-means on a sample of this many
        index.train(vectors)  # the Python wrapper keeps a reference to the quantizer
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        raise ConfigError(f"unknown FAISS stage {kind!r}; expected one of flat, ivf, hnsw")
    index.add(vectors)
    return index


def _index_kind(index: faiss.Index) -> str:
    """``flat``, ``ivf`` or ``hnsw``: which search parameters a FAISS index takes."""
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    return "flat"


class FaissStage:
    """Candidate stage with one FAISS inner-product index per item component plus one over mean items,
    and optionally one over the concatenated components (the linearized search).

    Build it with :meth:`build`; :meth:`save` / :meth:`load` write and read the ``Px + 1`` (``+ 1``)
    index files.

    Args:
        kind: ``flat``, ``ivf`` or ``hnsw``.
        component_indexes: ``Px`` FAISS indexes over ``g_b(x)``, each with ``N`` vectors of dimension ``d``.
        mean_index: a FAISS index over ``mean_b g_b(x)`` (``IndexFlatIP`` or one of ``kind``).
        nlist: IVF lists (recorded for the manifest; 0 for other kinds).
        concatenated_index: a FAISS index of ``kind`` over ``concat_b g_b(x)`` (``Px * d`` wide), or None.
    """

    def __init__(
        self,
        kind: str,
        component_indexes: list[faiss.Index],
        mean_index: faiss.Index,
        *,
        nlist: int = 0,
        concatenated_index: faiss.Index | None = None,
    ) -> None:
        if kind not in STAGE_KINDS[1:]:
            raise ConfigError(f"unknown FAISS stage {kind!r}; expected one of flat, ivf, hnsw")
        self.kind = kind
        self.nlist = nlist
        self.component_indexes = component_indexes
        self.mean_index = mean_index
        self.concatenated_index = concatenated_index

    @classmethod
    def build(
        cls,
        kind: str,
        item_embeddings: torch.Tensor,
        *,
        nlist: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        exact_mean: bool = True,
        concatenated: bool = False,
        item_gating: torch.Tensor | None = None,
    ) -> FaissStage:
        """Builds the indexes from ``(N, Px, d)`` item component embeddings.

        Args:
            kind: ``flat`` (exact), ``ivf`` (``nlist`` lists, k-means on the items) or ``hnsw``.
            item_embeddings: ``(N, Px, d)``.
            nlist: IVF lists; default ``round(4 * sqrt(N))`` (FAISS's guideline is 4 to 16 sqrt(N)), at
                most ``N // 39`` (FAISS wants 39 points per centroid), at least 1.
            hnsw_m: HNSW neighbours per node.
            ef_construction: HNSW build beam width.
            exact_mean: index the mean item embeddings with ``IndexFlatIP`` (default); False builds the
                mean index of ``kind`` too (cheaper per search on very large corpora, lower recall).
            concatenated: also index the linearized item vectors with ``kind`` (the linearized search;
                :func:`linearized_item_vectors`); an IVF one runs k-means on at most 64 points per list
                and stores the vectors in float16 (``IndexIVFScalarQuantizer``, ``QT_fp16``).
            item_gating: ``(N, P)`` item gating features, appended to the linearized item vectors; None
                indexes the concatenated components alone.
        """
        num_items = item_embeddings.shape[0]
        if nlist is None:
            nlist = max(1, min(round(4 * num_items**0.5), num_items // 39))
        if nlist < 1 or nlist > num_items:
            raise ConfigError(f"nlist must be in [1, N={num_items}]; got {nlist}")
        items = item_embeddings.detach().float().cpu()

        def new_index(kind: str, vectors: np.ndarray, **extra: Any) -> faiss.Index:
            return _new_faiss_index(
                kind, vectors, nlist=nlist, hnsw_m=hnsw_m, ef_construction=ef_construction, **extra
            )

        components = [
            new_index(kind, np.ascontiguousarray(items[:, b].numpy())) for b in range(items.shape[1])
        ]
        mean_kind = "flat" if exact_mean else kind
        mean = new_index(mean_kind, np.ascontiguousarray(items.mean(dim=1).numpy()))
        joined = None
        if concatenated:
            vectors = np.ascontiguousarray(linearized_item_vectors(items, item_gating).numpy())  # (N, F)
            joined = new_index(kind, vectors, max_points_per_centroid=64, ivf_fp16=True)
        return cls(kind, components, mean, nlist=nlist if kind == "ivf" else 0, concatenated_index=joined)

    @property
    def default_nprobe(self) -> int:
        """IVF lists visited when ``StageParams.nprobe`` is None: ``max(8, round(sqrt(nlist) / 2))``, at
        most nlist."""
        half_root: int = round(math.sqrt(self.nlist) / 2)
        return max(1, min(self.nlist, max(8, half_root)))

    @property
    def default_concatenated_nprobe(self) -> int:
        """IVF lists visited in the concatenated index when ``StageParams.nprobe`` is None: four times
        :attr:`default_nprobe` (128 at N = 1e6), at most nlist."""
        return min(self.nlist, 4 * self.default_nprobe) if self.nlist else self.default_nprobe

    @property
    def exact(self) -> bool:
        """True for ``flat``: IVF and HNSW may miss items, so the bound proves nothing with them."""
        return self.kind == "flat"

    @property
    def exact_mean(self) -> bool:
        """True when the mean index is ``IndexFlatIP`` (its TopKAvg candidates are exact)."""
        return _index_kind(self.mean_index) == "flat"

    def _search(
        self,
        index: faiss.Index,
        queries: torch.Tensor,
        k_prime: int,
        params: StageParams,
        default_nprobe: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        search_params: faiss.SearchParameters | None = None
        kind = _index_kind(index)
        if kind == "ivf":
            ivf = faiss.SearchParametersIVF()
            ivf.nprobe = params.nprobe or default_nprobe or self.default_nprobe
            search_params = ivf
        elif kind == "hnsw":
            hnsw = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stubs
            hnsw.efSearch = max(k_prime, params.ef_search or 16)
            search_params = hnsw
        x = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        dist, ids = index.search(x, k_prime, params=search_params)
        values = torch.from_numpy(dist)
        rows = torch.from_numpy(ids).to(torch.int64)
        values = values.masked_fill(rows < 0, float("-inf"))
        return values.to(queries.device), rows.to(queries.device)

    def per_component(
        self, queries: torch.Tensor, k_prime: int, params: StageParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``K'`` rows per (query component, item component); see :class:`CandidateStage`."""
        batch, num_q, dim = queries.shape
        flat_q = queries.reshape(batch * num_q, dim)  # (B*Pq, d)
        results = [self._search(index, flat_q, k_prime, params) for index in self.component_indexes]
        values = torch.stack([v for v, _ in results], dim=1)  # (B*Pq, Px, K')
        rows = torch.stack([r for _, r in results], dim=1)  # (B*Pq, Px, K')
        num_x = len(self.component_indexes)
        return values.view(batch, num_q, num_x, k_prime), rows.view(batch, num_q, num_x, k_prime)

    def mean(
        self, queries: torch.Tensor, k_prime: int, params: StageParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``K'`` rows by ``<mean f, mean g>``; see :class:`CandidateStage`."""
        return self._search(self.mean_index, queries, k_prime, params)

    @property
    def linearized_width(self) -> int:
        """The concatenated index's dimension, 0 without one; see :class:`CandidateStage`."""
        return 0 if self.concatenated_index is None else int(self.concatenated_index.d)

    def concatenated(
        self, queries: torch.Tensor, k_prime: int, params: StageParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``K'`` rows by ``<u, v(x)>``; see :class:`CandidateStage`.

        Raises:
            ConfigError: the stage was built without its concatenated-components index, or ``queries`` is
                not as wide as it.
        """
        if self.concatenated_index is None:
            raise ConfigError(
                "the linearized search needs an index over the concatenated item components: build the "
                "index with linearized=True (mol-index build --linearized)"
            )
        if queries.shape[-1] != self.linearized_width:
            raise ConfigError(
                f"linearized query vectors must be {self.linearized_width} wide; got {queries.shape[-1]}"
            )
        default_nprobe = self.default_concatenated_nprobe
        return self._search(self.concatenated_index, queries, k_prime, params, default_nprobe)

    def file_names(self) -> list[str]:
        """Relative paths of the index files :meth:`save` writes: ``Px`` component files, the mean, then
        the concatenated components when the stage has that index."""
        names = [f"faiss/component_{b}.faiss" for b in range(len(self.component_indexes))]
        names.append("faiss/mean.faiss")
        if self.concatenated_index is not None:
            names.append(_CONCATENATED_FILE)
        return names

    def save(self, root: Path) -> list[Path]:
        """Writes the index files under ``root``; returns their paths in :meth:`file_names` order."""
        (root / "faiss").mkdir(parents=True, exist_ok=True)
        paths = [root / name for name in self.file_names()]
        indexes = [*self.component_indexes, self.mean_index]
        if self.concatenated_index is not None:
            indexes.append(self.concatenated_index)
        for index, path in zip(indexes, paths, strict=True):
            faiss.write_index(index, str(path))
        return paths

    @classmethod
    def load(cls, kind: str, root: Path, num_item_components: int) -> FaissStage:
        """Reads the index files written by :meth:`save` (the concatenated one when present)."""
        names = [f"faiss/component_{b}.faiss" for b in range(num_item_components)] + ["faiss/mean.faiss"]
        if (root / _CONCATENATED_FILE).exists():
            names.append(_CONCATENATED_FILE)
        try:
            indexes = [faiss.read_index(str(root / name)) for name in names]
        except RuntimeError as err:  # FAISS reports unreadable files as RuntimeError
            raise ArtifactError(f"cannot read the FAISS index files of {root}: {err}") from err
        nlist = int(faiss.extract_index_ivf(indexes[0]).nlist) if kind == "ivf" else 0
        joined = indexes[num_item_components + 1] if len(indexes) > num_item_components + 1 else None
        return cls(
            kind,
            indexes[:num_item_components],
            indexes[num_item_components],
            nlist=nlist,
            concatenated_index=joined,
        )
