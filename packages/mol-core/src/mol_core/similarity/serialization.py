"""Similarity modules <-> ``mol.v1.SimilarityConfig``: the constructor arguments a bundle or index stores.

The module's parameters travel separately (a safetensors state dict). The proto's temperature is float32,
so writers that need the exact value keep it elsewhere too (e.g. in a manifest's parameters) and pass it to
:func:`similarity_from_config`.
"""

from __future__ import annotations

from mol_core.errors import ArtifactError, ConfigError
from mol_core.proto.mol.v1 import similarity_pb2
from mol_core.similarity.base import Similarity
from mol_core.similarity.dot_product import DotProductSimilarity
from mol_core.similarity.mixture_of_logits import MoLSimilarity

__all__ = ["similarity_from_config", "similarity_to_config"]


def similarity_to_config(similarity: Similarity) -> similarity_pb2.SimilarityConfig:
    """The constructor arguments of a ``MoLSimilarity`` or ``DotProductSimilarity``.

    Raises:
        ConfigError: another ``Similarity`` subclass (nothing could rebuild it from the config).
    """
    if isinstance(similarity, MoLSimilarity):
        gating = similarity.gating
        return similarity_pb2.SimilarityConfig(
            mixture_of_logits=similarity_pb2.MixtureOfLogitsConfig(
                query_components=similarity.num_query_components,
                item_components=similarity.num_item_components,
                component_dim=similarity.component_dim,
                user_components=similarity.user_components,
                temperature=similarity.temperature,
                gating_hidden_dim=gating.query_mlp.hidden.out_features,
                gating_dropout=gating.dropout,
                query_input_dim=similarity.query_input_dim,
                item_input_dim=similarity.item_input_dim,
                user_input_dim=similarity.user_input_dim or 0,
                user_dropout=similarity.user_dropout,
                query_layer_norm=similarity.query_layer_norm,
                query_hidden_dim=similarity.query_hidden_dim,
                item_dropout=similarity.item_dropout,
                user_direct=similarity.user_direct,
            )
        )
    if isinstance(similarity, DotProductSimilarity):
        return similarity_pb2.SimilarityConfig(
            dot_product=similarity_pb2.DotProductConfig(
                embedding_dim=similarity.component_dim,
                l2_normalize=similarity.l2_normalize,
                temperature=similarity.temperature,
            )
        )
    raise ConfigError(
        "only MoLSimilarity and DotProductSimilarity can be stored as a config; "
        f"got {type(similarity).__name__}"
    )


def similarity_from_config(
    config: similarity_pb2.SimilarityConfig, temperature: float | None = None
) -> Similarity:
    """Rebuilds the (untrained) similarity module; load its state dict afterwards.

    Args:
        config: the manifest's similarity.
        temperature: the exact temperature (float64) if known; else the config's float32 value.

    Raises:
        ArtifactError: no kind is set, or the values are invalid.
    """
    kind = config.WhichOneof("kind")
    try:
        if kind == "mixture_of_logits":
            mol = config.mixture_of_logits
            return MoLSimilarity(
                query_input_dim=mol.query_input_dim,
                item_input_dim=mol.item_input_dim,
                query_components=mol.query_components,
                item_components=mol.item_components,
                component_dim=mol.component_dim,
                temperature=temperature if temperature is not None else mol.temperature,
                gating_hidden_dim=mol.gating_hidden_dim,
                gating_dropout=mol.gating_dropout,
                user_components=mol.user_components,
                user_input_dim=mol.user_input_dim or None,
                user_dropout=mol.user_dropout,
                query_layer_norm=mol.query_layer_norm,
                query_hidden_dim=mol.query_hidden_dim,
                item_dropout=mol.item_dropout,
                user_direct=mol.user_direct,
            )
        if kind == "dot_product":
            dot = config.dot_product
            return DotProductSimilarity(
                dot.embedding_dim,
                l2_normalize=dot.l2_normalize,
                temperature=temperature if temperature is not None else dot.temperature,
            )
    except ConfigError as err:
        raise ArtifactError(f"the manifest's similarity config is invalid: {err}") from err
    raise ArtifactError("the manifest's similarity config has no kind set; rebuild the artifact")
