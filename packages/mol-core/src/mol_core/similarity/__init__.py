"""Similarity functions: the shared interface, the dot product and Mixture-of-Logits."""

from mol_core.similarity.base import DEFAULT_BLOCK_PAIRS, ItemSide, QuerySide, Similarity
from mol_core.similarity.dot_product import DotProductSimilarity
from mol_core.similarity.gating import GatingMLP, GluSiluGating
from mol_core.similarity.mixture_of_logits import MOL_INITS, MoLSimilarity
from mol_core.similarity.serialization import similarity_from_config, similarity_to_config
from mol_core.similarity.swiglu import SwiGLU

__all__ = [
    "DEFAULT_BLOCK_PAIRS",
    "MOL_INITS",
    "DotProductSimilarity",
    "GatingMLP",
    "GluSiluGating",
    "ItemSide",
    "MoLSimilarity",
    "QuerySide",
    "Similarity",
    "SwiGLU",
    "similarity_from_config",
    "similarity_to_config",
]
