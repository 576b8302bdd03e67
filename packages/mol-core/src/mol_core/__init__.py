"""mol-core: learned similarities for retrieval.

The similarity interface with the dot product and Mixture-of-Logits (:mod:`mol_core.similarity`), their
training losses (:mod:`mol_core.losses`), full-corpus ranking metrics (:mod:`mol_core.metrics`), the
error hierarchy (:mod:`mol_core.errors`), artifact manifest helpers (:mod:`mol_core.manifest`), model
bundles (:mod:`mol_core.bundle`) and the code generated from ``protos/`` (:mod:`mol_core.proto`).

Importing ``mol_core`` does not import torch: the torch-based names below load on first use (PEP 562), so
torch-free code (a gRPC client) can use :mod:`mol_core.errors` and :mod:`mol_core.proto` on their own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mol_core.errors import ArtifactError, ConfigError, MolError, ShapeError

if TYPE_CHECKING:
    from mol_core.losses import (
        in_batch_softmax_loss,
        mutual_information_loss,
        sample_uniform_negatives,
        sampled_softmax_loss,
    )
    from mol_core.similarity import (
        DEFAULT_BLOCK_PAIRS,
        DotProductSimilarity,
        ItemSide,
        MoLSimilarity,
        QuerySide,
        Similarity,
    )

__version__ = "0.1.0"

_LAZY = {
    "DEFAULT_BLOCK_PAIRS": "mol_core.similarity",
    "DotProductSimilarity": "mol_core.similarity",
    "ItemSide": "mol_core.similarity",
    "MoLSimilarity": "mol_core.similarity",
    "QuerySide": "mol_core.similarity",
    "Similarity": "mol_core.similarity",
    "in_batch_softmax_loss": "mol_core.losses",
    "mutual_information_loss": "mol_core.losses",
    "sample_uniform_negatives": "mol_core.losses",
    "sampled_softmax_loss": "mol_core.losses",
}

__all__ = [
    "DEFAULT_BLOCK_PAIRS",
    "ArtifactError",
    "ConfigError",
    "DotProductSimilarity",
    "ItemSide",
    "MoLSimilarity",
    "MolError",
    "QuerySide",
    "ShapeError",
    "Similarity",
    "__version__",
    "in_batch_softmax_loss",
    "mutual_information_loss",
    "sample_uniform_negatives",
    "sampled_softmax_loss",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mol_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
