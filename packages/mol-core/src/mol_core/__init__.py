"""mol-core: learned similarities for retrieval.

The similarity interface with the dot product and Mixture-of-Logits (:mod:`mol_core.similarity`), their
training losses (:mod:`mol_core.losses`), full-corpus ranking metrics (:mod:`mol_core.metrics`), the
error hierarchy (:mod:`mol_core.errors`), artifact manifest helpers (:mod:`mol_core.manifest`) and the
code generated from ``protos/`` (:mod:`mol_core.proto`).
"""

from mol_core.errors import ArtifactError, ConfigError, MolError, ShapeError
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
