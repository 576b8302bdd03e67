"""One class per index kind, all :class:`~mol_index.index.MolIndex` (the interface).

===================  =====================  ==========================================================
kind                 class                  its own search parameters
===================  =====================  ==========================================================
``exact``            :class:`IndexExact`    (ExactParams and RailsParams over the torch GEMM stage)
``faiss-flat/ivf/    :class:`IndexFaiss`    RailsParams with ``nprobe`` / ``ef_search``
hnsw``
``pq``               :class:`IndexPQ`       :class:`~mol_index.params.PQParams`
``hierarchical``     :class:`IndexHierarchical`  :class:`~mol_index.params.HierarchicalParams`
``adaptive``         :class:`IndexAdaptive` :class:`~mol_index.params.AdaptiveParams`
===================  =====================  ==========================================================
"""

from __future__ import annotations

from mol_core.errors import ArtifactError
from mol_index.index import MolIndex
from mol_index.indexes.adaptive import IndexAdaptive
from mol_index.indexes.exact import IndexExact
from mol_index.indexes.faiss import IndexFaiss
from mol_index.indexes.hierarchical import IndexHierarchical
from mol_index.indexes.pq import IndexPQ

__all__ = ["IndexAdaptive", "IndexExact", "IndexFaiss", "IndexHierarchical", "IndexPQ", "index_class"]

_BY_STAGE: dict[str, type[MolIndex]] = {
    "torch": IndexExact,
    "flat": IndexFaiss,
    "ivf": IndexFaiss,
    "hnsw": IndexFaiss,
    "pq": IndexPQ,
    "hierarchical": IndexHierarchical,
    "adaptive": IndexAdaptive,
}


def index_class(stage_kind: str) -> type[MolIndex]:
    """The class of an artifact's stage kind (``torch``, ``flat``, ``ivf``, ``hnsw``, ``pq``, ...).

    Raises:
        ArtifactError: an unknown stage kind.
    """
    if stage_kind not in _BY_STAGE:
        raise ArtifactError(
            f"unknown index stage kind {stage_kind!r}; expected one of {', '.join(_BY_STAGE)}"
        )
    return _BY_STAGE[stage_kind]
