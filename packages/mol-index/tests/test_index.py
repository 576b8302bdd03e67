"""MolIndex: external ids, exclusions by id, every algorithm and stage, dot-product indexes, bad input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import mol_core
import mol_index
from mol_core.errors import ConfigError, ShapeError
from mol_core.similarity import DotProductSimilarity, ItemSide
from mol_index import Algorithm, MolIndex, SearchParams, build_from_arrays, exact_search


def test_public_api_is_curated() -> None:
    assert mol_index.__all__ == sorted(mol_index.__all__)
    assert mol_index.__version__ == mol_core.__version__  # versions move in lockstep
    for name in mol_index.__all__:
        assert getattr(mol_index, name).__doc__ or name == "__version__", name


@pytest.mark.parametrize("stage", ["torch", "flat", "ivf", "hnsw"])
def test_search_returns_external_ids_of_the_exact_rows(mol_corpus: Callable[..., tuple], stage: str) -> None:
    sim, query, corpus = mol_corpus(0, 400, 3)
    ids = torch.arange(400, dtype=torch.int64).flip(0) * 3 + 1000  # external id of row r
    index = MolIndex.build(sim, ids, corpus, stage=stage)
    history = [[ids[5].item(), 999_999], [], [ids[0].item()]]  # 999_999 is not in the index: ignored
    with torch.inference_mode():
        ref_scores, ref_rows = exact_search(sim, query, corpus, 10, exclude=[[5], [], [0]])
    scores, got = index.search(query, 10, exclude=history, params=SearchParams(algorithm=Algorithm.EXACT))
    assert torch.equal(got, ids[ref_rows])
    # on the CPU the exact search runs the fused C++ kernel: its scores agree to rounding, not bitwise
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=2e-5)
    info = index.search_with_info(query, 10, exclude=history, params=SearchParams(k_prime=400))
    assert set(info.ids[0].tolist()).isdisjoint({ids[5].item()})
    if stage in ("torch", "flat"):
        assert bool(info.exact.all())
        assert torch.equal(info.ids, got)


def test_tensor_queries_with_gating_equal_query_side(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(1, 100, 2)
    index = build_from_arrays(sim, torch.arange(100), corpus)
    a = index.search(query, 5)
    b = index.search(query.embeddings, 5, gating=query.gating)
    assert torch.equal(a[1], b[1])


def test_guarantee_exact_equals_exact(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(2, 600, 6)
    index = MolIndex.build(sim, torch.arange(600), corpus, stage="flat")
    exact = index.search(query, 10, params=SearchParams(algorithm="exact"))
    res = index.search_with_info(query, 10, params=SearchParams(k_prime=4, guarantee_exact=True))
    assert bool(res.exact.all())
    torch.testing.assert_close(res.scores, exact[0], atol=1e-5, rtol=0)


def test_build_from_item_representations() -> None:
    from mol_core.similarity import MoLSimilarity

    torch.manual_seed(0)
    sim = MoLSimilarity(
        query_input_dim=8, item_input_dim=8, query_components=2, item_components=2, component_dim=8
    ).eval()
    reprs = torch.randn(50, 8)
    index = MolIndex.build(sim, torch.arange(50), reprs)
    with torch.inference_mode():
        corpus = sim.item_side(reprs)
    torch.testing.assert_close(index.corpus.embeddings, corpus.embeddings)


@pytest.mark.parametrize("stage", ["flat", "ivf", "hnsw"])
def test_dot_product_index(stage: str) -> None:
    torch.manual_seed(0)
    centers = torch.randn(20, 32)
    items = centers[torch.randint(0, 20, (2000,))] + 0.3 * torch.randn(2000, 32)
    queries = centers[torch.randint(0, 20, (16,))] + 0.3 * torch.randn(16, 32)
    sim = DotProductSimilarity(32, l2_normalize=True, temperature=0.05)
    index = MolIndex.build(sim, torch.arange(2000) + 10, items, stage=stage)
    want = torch.topk(
        torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(items, dim=1).T, 10
    )
    scores, ids = index.search(
        queries,
        10,
        params=SearchParams(algorithm=Algorithm.TOP_K_PER_EMBD, k_prime=50, nprobe=8, ef_search=64),
    )
    hits = sum(len(set((w + 10).tolist()) & set(g.tolist())) for w, g in zip(want.indices, ids, strict=True))
    assert hits / ids.numel() >= (1.0 if stage == "flat" else 0.9)
    torch.testing.assert_close(scores[:, 0], want.values[:, 0] / 0.05, atol=1e-3, rtol=0)


def test_bad_input_is_a_clear_error(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(3, 60, 2)
    index = MolIndex.build(sim, torch.arange(60), corpus)
    with pytest.raises(ShapeError, match=r"\(B, Pq=4, d=16\)"):
        index.search(query.embeddings[:, :, :8], 3, gating=query.gating)
    with pytest.raises(ShapeError, match="gating"):
        index.search(query.embeddings, 3)
    with pytest.raises(ConfigError, match=r"k must be in \[1, N=60\]"):
        index.search(query, 0)
    with pytest.raises(ConfigError, match=r"k must be in \[1, N=60\]"):
        index.search(query, 61)
    with pytest.raises(ConfigError, match="distinct"):
        MolIndex.build(sim, torch.zeros(60, dtype=torch.int64), corpus)
    with pytest.raises(ConfigError, match=">= 0"):
        MolIndex.build(sim, torch.arange(60) - 1, corpus)
    with pytest.raises(ShapeError, match="item_ids"):
        MolIndex.build(sim, torch.arange(59), corpus)
    with pytest.raises(ShapeError, match="item embeddings"):
        MolIndex.build(sim, torch.arange(60), ItemSide(corpus.embeddings[:, :1], corpus.gating))
    with pytest.raises(ShapeError, match="gating"):
        MolIndex.build(sim, torch.arange(60), ItemSide(corpus.embeddings, None))
    with pytest.raises(ShapeError, match="gating"):
        MolIndex.build(sim, torch.arange(60), ItemSide(corpus.embeddings, corpus.gating[:, :3]))
    with pytest.raises(ConfigError, match="unknown stage"):
        MolIndex.build(sim, torch.arange(60), corpus, stage="lsh")
    with pytest.raises(ConfigError, match=r"SearchParams\.algorithm must be one of 'exact', .*; got 'bogus'"):
        SearchParams(algorithm="bogus")
    with pytest.raises(ConfigError, match="k_prime"):
        SearchParams(k_prime=0)
    with pytest.raises(ConfigError, match="k_prime_avg"):
        SearchParams(k_prime_avg=0)
    dot = MolIndex.build(DotProductSimilarity(16), torch.arange(60), torch.randn(60, 16))
    with pytest.raises(ShapeError, match=r"\(B, 16\)"):
        dot.search(torch.randn(2, 15), 3)


def test_unknown_kernel_is_refused() -> None:
    expected = "kernel must be one of 'auto', 'torch', 'torch-bf16', 'cpu', 'triton'; got 'cuda'"
    with pytest.raises(ConfigError, match=expected):
        SearchParams(kernel="cuda")


def test_to_moves_torch_stage_indexes_and_refuses_faiss_stages(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(5, 200, 4)
    index = MolIndex.build(sim, torch.arange(200) + 1000, corpus)
    before = index.search(query, 5, params=SearchParams(algorithm="comb_topk", k_prime=8))
    assert index.to("cpu") is index
    assert index.device == torch.device("cpu")
    after = index.search(query, 5, params=SearchParams(algorithm="comb_topk", k_prime=8))
    assert torch.equal(before[1], after[1])
    flat = MolIndex.build(sim, torch.arange(200), corpus, stage="flat")
    with pytest.raises(ConfigError, match="faiss-flat index runs its FAISS stage on the CPU"):
        flat.to("meta")
