"""mol-index: exact and approximate Mixture-of-Logits top-k retrieval over versioned index artifacts.

- :func:`exact_search`: blockwise exact top-k under any similarity, the ground truth;
- :func:`rails_search`: the RAILS algorithms (TopKPerEmbd, TopKAvg, CombTopK) with the exactness bound;
- :class:`MolIndex`: build / save / load / search with external ids, candidate stages by torch GEMM or
  FAISS (flat, IVF, HNSW), also for dot-product (two-tower) models;
- the CLI ``mol-index build|search|bench|info``;
- :func:`build_adaptive`: adaptive retrieval for expensive scorers (AXN, :mod:`mol_index.adaptive`);
- :func:`build_pq`: a product-quantization index from a PQ layer trained with the model (Poeem,
  :mod:`mol_index.pq_index`, :mod:`mol_index.index_layers`) or fitted after training;
- :func:`build_hierarchical`: a hierarchy of clusters scored top-down with the similarity (HSNN,
  :mod:`mol_index.hierarchical`, trainable with the model through :mod:`mol_index.hierarchical_layer`);
- :mod:`mol_index.triton_topk`: a fused Triton top-k kernel (optional ``triton`` extra; not imported here).

Errors are mol-core's: ``ConfigError`` / ``ShapeError`` (ValueErrors) for bad arguments, ``ArtifactError``
for index directories.
"""

from mol_index.candidates import FaissStage, StageParams, TorchStage
from mol_index.exact import exact_search
from mol_index.hierarchical import HierarchicalIndex
from mol_index.index import (
    MolIndex,
    SearchParams,
    build_adaptive,
    build_from_arrays,
    build_from_bundle,
    build_hierarchical,
    build_pq,
)
from mol_index.index_layers import PQItemLayer
from mol_index.rails import Algorithm, SearchResult, rails_search

__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "FaissStage",
    "HierarchicalIndex",
    "MolIndex",
    "PQItemLayer",
    "SearchParams",
    "SearchResult",
    "StageParams",
    "TorchStage",
    "__version__",
    "build_adaptive",
    "build_from_arrays",
    "build_from_bundle",
    "build_hierarchical",
    "build_pq",
    "exact_search",
    "rails_search",
]
