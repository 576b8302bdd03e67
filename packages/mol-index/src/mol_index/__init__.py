"""mol-index: exact and approximate Mixture-of-Logits top-k retrieval over versioned index artifacts.

Read like FAISS:

- :class:`MolIndex` (:mod:`mol_index.index`): the index interface: ``search`` / ``search_with_info``
  returning ``(scores, ids)``, ``save`` / ``load``, ``to``, ``add_items`` / ``remove_items``;
- one class per kind (:mod:`mol_index.indexes`): :class:`IndexExact`, :class:`IndexFaiss` (RAILS over
  FAISS flat / IVF / HNSW stages), :class:`IndexPQ` (Poeem), :class:`IndexHierarchical` (HSNN),
  :class:`IndexAdaptive` (AXN), each with its own parameters class (:mod:`mol_index.params`);
- :func:`index_factory` builds any kind from a short spec string, :func:`load_index` loads any artifact
  (:mod:`mol_index.factory`, with the earlier ``build_*`` spellings);
- :mod:`mol_index.search`: the algorithms on tensors (:func:`exact_search`, :func:`rails_search`,
  candidate stages, PQ, the cluster tree, AXN);
- :mod:`mol_index.kernels`: compiled top-k kernels (the Triton kernel; optional ``triton`` extra);
- :mod:`mol_index.layers`: index layers trained with the model (mol-train's ``index`` extra);
- :mod:`mol_index.evaluation`: synthetic corpora, recall and latency helpers for benchmarks and tests;
- the CLI ``mol-index build|search|info``; the benchmarks are scripts in ``packages/mol-index/benchmarks``.

Errors are mol-core's: ``ConfigError`` / ``ShapeError`` (ValueErrors) for bad arguments, ``ArtifactError``
for index directories.
"""

from mol_index.factory import (
    build_adaptive,
    build_from_arrays,
    build_from_bundle,
    build_hierarchical,
    build_pq,
    index_factory,
    load_index,
)
from mol_index.index import MolIndex
from mol_index.indexes import IndexAdaptive, IndexExact, IndexFaiss, IndexHierarchical, IndexPQ
from mol_index.layers import PQItemLayer
from mol_index.params import (
    AdaptiveParams,
    ExactParams,
    HierarchicalParams,
    LinearizedParams,
    PQParams,
    RailsParams,
    SearchParams,
)
from mol_index.search.candidates import FaissStage, StageParams, TorchStage
from mol_index.search.exact import exact_search
from mol_index.search.hierarchy import HierarchicalIndex
from mol_index.search.linearized import linearized_search
from mol_index.search.rails import Algorithm, SearchResult, rails_search
from mol_index.sharding import ShardedIndex, merge_top_k, shard_of

__version__ = "0.1.0"

__all__ = [
    "AdaptiveParams",
    "Algorithm",
    "ExactParams",
    "FaissStage",
    "HierarchicalIndex",
    "HierarchicalParams",
    "IndexAdaptive",
    "IndexExact",
    "IndexFaiss",
    "IndexHierarchical",
    "IndexPQ",
    "LinearizedParams",
    "MolIndex",
    "PQItemLayer",
    "PQParams",
    "RailsParams",
    "SearchParams",
    "SearchResult",
    "ShardedIndex",
    "StageParams",
    "TorchStage",
    "__version__",
    "build_adaptive",
    "build_from_arrays",
    "build_from_bundle",
    "build_hierarchical",
    "build_pq",
    "exact_search",
    "index_factory",
    "linearized_search",
    "load_index",
    "merge_top_k",
    "rails_search",
    "shard_of",
]
