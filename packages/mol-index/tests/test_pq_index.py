"""The ``pq`` index: codes from a trained layer or k-means, quantized scan + exact rerank, the artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mol_core.errors import ArtifactError, ConfigError, ShapeError
from mol_core.similarity import DotProductSimilarity, ItemSide, QuerySide
from mol_index import MolIndex, SearchParams, build_pq
from mol_index.layers import PQItemLayer
from mol_index.search.pq import encode_corpus, fit_codes, pq_search


def _decoded_reference(sim, query, corpus, codes, k):  # type: ignore[no-untyped-def]
    """Brute force over the whole decoded corpus at once: the quantized top-k rows."""
    decoded = ItemSide(codes.decode(0, corpus.num_items), corpus.gating)
    with torch.inference_mode():
        return torch.topk(sim.score_pairs(query, decoded), k, dim=1).indices


def test_codes_of_a_trained_layer_decode_to_what_the_layer_returns(mol_corpus) -> None:  # type: ignore[no-untyped-def]
    _, _, corpus = mol_corpus(0, 300, 2)
    layer = PQItemLayer(16, coarse=4, subspaces=4, codebook_size=16)
    layer.warm_start(corpus)
    codes = encode_corpus(layer, corpus)
    assert codes.codes.shape == (300, 2, 4)
    assert codes.coarse.shape == (300, 2)
    with torch.no_grad():
        torch.testing.assert_close(codes.decode(0, 300), layer(corpus).embeddings, atol=1e-5, rtol=1e-5)
    assert codes.bytes_per_item() == 2 * (4 * 4 + 2) / 8  # Px * (M * log2 K + log2 C) bits


def test_scan_keeps_the_quantized_top_and_reranks_exactly(mol_corpus, reference) -> None:  # type: ignore[no-untyped-def]
    sim, query, corpus = mol_corpus(1, 500, 4)
    codes = fit_codes(corpus, coarse=4, subspaces=4, codebook_size=16)
    res = pq_search(sim, query, corpus, codes, 10, k_prime=30)
    want_rows = _decoded_reference(sim, query, corpus, codes, 30)
    _, _, full = reference(sim, query, corpus, 10)
    for b in range(4):
        assert set(res.ids[b].tolist()) <= set(want_rows[b].tolist())
        torch.testing.assert_close(res.scores[b], full[b, res.ids[b]])  # exact MoL scores of the kept rows
        assert torch.all(res.scores[b, :-1] >= res.scores[b, 1:])
    assert not bool(res.exact.any())
    # K' = N: everything is reranked, so the result is exact search's
    every = pq_search(sim, query, corpus, codes, 10, k_prime=500)
    values, ids, _ = reference(sim, query, corpus, 10)
    assert torch.equal(every.ids, ids)
    assert bool(every.exact.all())
    torch.testing.assert_close(every.scores, values)


def test_codes_of_a_jointly_trained_layer_rank_by_their_decoded_scores(mol_corpus) -> None:  # type: ignore[no-untyped-def]
    sim, query, corpus = mol_corpus(7, 300, 4)
    layer = PQItemLayer(16, coarse=2, subspaces=4, codebook_size=8)
    layer.warm_start(corpus)
    joint = build_pq(MolIndex.build(sim, torch.arange(300), corpus), layer=layer)
    assert joint.pq is not None
    assert joint.pq.source == "joint"
    scores, found = joint.search(query, 10, params=SearchParams(algorithm="pq", k_prime=100))
    # the model trained on the decoded items: their brute-force top 10 and scores, K' notwithstanding
    decoded = ItemSide(joint.pq.decode(0, 300), corpus.gating)
    with torch.inference_mode():
        want_scores, want_rows = torch.topk(sim.score_pairs(query, decoded), 10, dim=1)
    assert torch.equal(found, want_rows)
    torch.testing.assert_close(scores, want_scores)
    # asked to, the index reranks them by exact MoL on the unquantized items, which changes the scores
    res = pq_search(sim, query, corpus, joint.pq, 10, k_prime=100)
    assert not torch.allclose(res.scores, want_scores)
    reranked_scores, reranked = joint.search(
        query, 10, params=SearchParams(algorithm="pq", k_prime=100, rerank=True)
    )
    assert torch.equal(reranked, res.ids)
    torch.testing.assert_close(reranked_scores, res.scores)


def test_quantized_recall_is_high_with_fine_codes_and_low_with_coarse_ones(mol_corpus, reference) -> None:  # type: ignore[no-untyped-def]
    sim, query, corpus = mol_corpus(2, 400, 8)
    _, ids, _ = reference(sim, query, corpus, 10)

    def recall(codebook_size: int, subspaces: int) -> float:
        codes = fit_codes(corpus, subspaces=subspaces, codebook_size=codebook_size)
        found = pq_search(sim, query, corpus, codes, 10).ids
        return sum(len(set(found[b].tolist()) & set(ids[b].tolist())) for b in range(8)) / 80

    assert recall(256, 8) > recall(2, 1)


def test_pq_index_round_trips_and_excludes(tmp_path: Path, mol_corpus) -> None:  # type: ignore[no-untyped-def]
    sim, query, corpus = mol_corpus(3, 300, 3)
    ids = torch.arange(1000, 1300)
    index = build_pq(MolIndex.build(sim, ids, corpus), coarse=2, subspaces=4, codebook_size=16)
    assert index.kind == "pq"
    params = SearchParams(algorithm="pq", k_prime=20)
    exclude = [[1000, 1001, 1002], [], [1299]]
    scores, found = index.search(query, 5, exclude=exclude, params=params)
    for b, rows in enumerate(exclude):
        assert not set(rows) & set(found[b].tolist())
    index.save(tmp_path / "pq")
    loaded = MolIndex.load(tmp_path / "pq")
    assert loaded.kind == "pq"
    assert loaded.pq is not None
    assert loaded.pq.source == "kmeans"
    again_scores, again = loaded.search(query, 5, exclude=exclude, params=params)
    assert torch.equal(again, found)
    torch.testing.assert_close(again_scores, scores)
    # the other algorithms still work on a pq index (its items are kept unquantized for the rerank)
    exact_scores, _ = loaded.search(query, 5, params=SearchParams(algorithm="exact"))
    assert exact_scores.shape == (3, 5)


def test_dot_product_pq_index() -> None:
    torch.manual_seed(4)
    sim = DotProductSimilarity(16, l2_normalize=True).eval()
    index = MolIndex.build(sim, torch.arange(400), torch.randn(400, 16))
    pq = build_pq(index, subspaces=4, codebook_size=32)
    query = QuerySide(torch.nn.functional.normalize(torch.randn(5, 1, 16), dim=-1), None)
    _, want = index.search(query, 10, params=SearchParams(algorithm="exact"))
    _, got = pq.search(query, 10, params=SearchParams(algorithm="pq", k_prime=400))
    assert torch.equal(got, want)


def test_bad_input(mol_corpus) -> None:  # type: ignore[no-untyped-def]
    sim, query, corpus = mol_corpus(5, 40, 1)
    with pytest.raises(ConfigError, match="too few items for the codebook size: 80 embeddings"):
        fit_codes(corpus, codebook_size=256)
    with pytest.raises(ConfigError, match="never warm-started"):
        encode_corpus(PQItemLayer(16, subspaces=4, codebook_size=4), corpus)
    layer = PQItemLayer(8, subspaces=2, codebook_size=4)
    layer.warm_start(ItemSide(torch.randn(20, 1, 8), None))
    with pytest.raises(ShapeError, match="d=8"):
        encode_corpus(layer, corpus)
    with pytest.raises(ConfigError, match="divisible"):
        fit_codes(corpus, subspaces=3, codebook_size=4)
    index = MolIndex.build(sim, torch.arange(40), corpus)
    with pytest.raises(ConfigError, match="algorithm 'pq' needs an index of kind 'pq'"):
        index.search(query, 5, params=SearchParams(algorithm="pq"))


def test_a_pq_artifact_with_codes_that_do_not_fit_is_refused(tmp_path: Path, mol_corpus) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file, save_file

    from mol_core.manifest import MANIFEST_FILENAME

    sim, _, corpus = mol_corpus(6, 100, 1)
    build_pq(MolIndex.build(sim, torch.arange(100), corpus), subspaces=4, codebook_size=8).save(
        tmp_path / "i"
    )
    tensors = load_file(str(tmp_path / "i" / "pq.safetensors"))
    tensors["codes"] = tensors["codes"][:50].contiguous()
    save_file(tensors, str(tmp_path / "i" / "pq.safetensors"))
    with pytest.raises(ArtifactError, match=r"pq\.safetensors"):
        MolIndex.load(tmp_path / "i")  # the checksum no longer matches
    assert (tmp_path / "i" / MANIFEST_FILENAME).is_file()
