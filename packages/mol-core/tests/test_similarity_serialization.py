"""A similarity rebuilt from its SimilarityConfig plus its state dict scores exactly like the original."""

from __future__ import annotations

import pytest
import torch

from mol_core import ArtifactError, ConfigError
from mol_core.proto.mol.v1 import similarity_pb2
from mol_core.similarity import (
    DotProductSimilarity,
    MoLSimilarity,
    Similarity,
    similarity_from_config,
    similarity_to_config,
)


@pytest.mark.parametrize(
    "original",
    [
        MoLSimilarity(
            query_input_dim=6,
            item_input_dim=5,
            query_components=3,
            item_components=2,
            component_dim=4,
            user_components=1,
            user_input_dim=3,
            temperature=0.07,
        ),
        DotProductSimilarity(6, l2_normalize=True, temperature=0.05),
    ],
    ids=["mol", "dot"],
)
def test_round_trip_scores_identically(original: Similarity) -> None:
    torch.manual_seed(0)
    config = similarity_pb2.SimilarityConfig.FromString(similarity_to_config(original).SerializeToString())
    rebuilt = similarity_from_config(config, temperature=original.temperature)
    rebuilt.load_state_dict(original.state_dict())
    original.eval()
    rebuilt.eval()
    dq = 6
    users = torch.randn(2, 3) if isinstance(original, MoLSimilarity) else None
    queries = torch.randn(2, dq)
    items = torch.randn(7, 5 if isinstance(original, MoLSimilarity) else 6)
    with torch.no_grad():
        want = original.score_corpus(original.query_side(queries, users), original.item_side(items))
        got = rebuilt.score_corpus(rebuilt.query_side(queries, users), rebuilt.item_side(items))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bad_configs_are_artifact_errors() -> None:
    with pytest.raises(ArtifactError, match="no kind set"):
        similarity_from_config(similarity_pb2.SimilarityConfig())
    bad = similarity_pb2.SimilarityConfig(
        dot_product=similarity_pb2.DotProductConfig(embedding_dim=0, temperature=1.0)
    )
    with pytest.raises(ArtifactError, match="invalid"):
        similarity_from_config(bad)


def test_unknown_similarity_cannot_be_stored() -> None:
    class Custom(DotProductSimilarity):
        pass

    assert (
        similarity_to_config(Custom(3)).WhichOneof("kind") == "dot_product"
    )  # a subclass is still a dot product

    class Other(Similarity):
        def query_side(self, query_repr, user_repr=None):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def item_side(self, item_repr):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def mix(self, logits, query_gating, item_gating):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    with pytest.raises(ConfigError, match="only MoLSimilarity and DotProductSimilarity"):
        similarity_to_config(
            Other(num_query_components=1, num_item_components=1, component_dim=2, temperature=1.0)
        )
