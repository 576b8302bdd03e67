"""The RAILS algorithms: recall against exact search, the exactness bound, the exact-guaranteed mode."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mol_core.errors import ConfigError
from mol_core.similarity import DotProductSimilarity
from mol_index import Algorithm, FaissStage, TorchStage, exact_search, rails_search
from mol_index.search.candidates import StageParams

ALGORITHMS = [Algorithm.TOP_K_PER_EMBD, Algorithm.TOP_K_AVG, Algorithm.COMB_TOP_K]


def recall(ids: torch.Tensor, ref: torch.Tensor) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, ref, strict=True))
    return hits / ref.numel()


@pytest.mark.parametrize("stage_kind", ["torch", "flat", "hnsw"])
def test_recall_grows_with_k_prime_and_comb_is_a_superset(
    mol_corpus: Callable[..., tuple], stage_kind: str
) -> None:
    sim, query, corpus = mol_corpus(0, 2000, 16)
    stage = (
        TorchStage(corpus.embeddings)
        if stage_kind == "torch"
        else FaissStage.build(stage_kind, corpus.embeddings)
    )
    with torch.inference_mode():
        _, ref = exact_search(sim, query, corpus, 10)
        recalls = {}
        for algorithm in ALGORITHMS:
            for k_prime in (10, 100):
                res = rails_search(sim, query, corpus, 10, stage, algorithm=algorithm, k_prime=k_prime)
                recalls[algorithm, k_prime] = recall(res.ids, ref)
                assert bool((res.num_candidates <= len(query.embeddings[0]) * 2 * k_prime + k_prime).all())
    for algorithm in ALGORITHMS:
        assert recalls[algorithm, 100] >= recalls[algorithm, 10] - 1e-9
    # CombTopK reranks a superset of both candidate sets, so it is at least as good as either
    assert recalls[Algorithm.COMB_TOP_K, 100] >= max(recalls[a, 100] for a in ALGORITHMS[:2]) - 1e-9
    assert recalls[Algorithm.COMB_TOP_K, 100] >= 0.9


def test_k_prime_avg_widens_only_the_mean_candidates(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(6, 400, 5)
    k_prime, k_prime_avg = 6, 150
    f, g = query.embeddings, corpus.embeddings  # (B, Pq, d), (N, Px, d)
    with torch.inference_mode():
        res = rails_search(sim, query, corpus, 10, TorchStage(g), k_prime=k_prime, k_prime_avg=k_prime_avg)
        full = sim.score_pairs(query, corpus)  # (B, N)
    for row in range(f.shape[0]):
        # the reference candidate set, one (query component, item component) pair at a time
        union: set[int] = set()
        for a in range(f.shape[1]):
            for b in range(g.shape[1]):
                union |= set(torch.topk(g[:, b] @ f[row, a], k_prime).indices.tolist())
        union |= set(torch.topk(g.mean(dim=1) @ f[row].mean(dim=0), k_prime_avg).indices.tolist())
        assert int(res.num_candidates[row]) == len(union)
        rows = torch.tensor(sorted(union))
        best = rows[torch.topk(full[row, rows], 10).indices]
        assert set(res.ids[row].tolist()) == set(best.tolist())


def test_candidates_are_reranked_exactly(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(4, 500, 4)
    with torch.inference_mode():
        res = rails_search(sim, query, corpus, 5, TorchStage(corpus.embeddings), k_prime=8)
        full = sim.score_pairs(query, corpus)  # (B, N)
    torch.testing.assert_close(res.scores, full.gather(1, res.ids), atol=1e-5, rtol=0)


def test_k_prime_at_least_n_is_exact_for_every_algorithm(
    mol_corpus: Callable[..., tuple], reference: Callable[..., tuple], same_topk: Callable[..., None]
) -> None:
    sim, query, corpus = mol_corpus(5, 120, 3)
    ref = reference(sim, query, corpus, 7, [[1, 2], [], [119]])
    with torch.inference_mode():
        for algorithm in ALGORITHMS:
            res = rails_search(
                sim,
                query,
                corpus,
                7,
                TorchStage(corpus.embeddings),
                algorithm=algorithm,
                k_prime=500,
                exclude=[[1, 2], [], [119]],
            )
            assert bool(res.exact.all())
            same_topk(res.scores, res.ids, *ref)


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    num_items=st.integers(20, 300),
    k=st.integers(1, 20),
    k_prime=st.integers(1, 300),
    comb=st.booleans(),
    with_exclude=st.booleans(),
)
def test_reported_exact_results_equal_exact_search(
    mol_corpus: Callable[..., tuple],
    reference: Callable[..., tuple],
    same_topk: Callable[..., None],
    seed: int,
    num_items: int,
    k: int,
    k_prime: int,
    comb: bool,
    with_exclude: bool,
) -> None:
    # K' up to N: large K' makes the bound prove most results exact, small K' exercises the failures
    k, k_prime = min(k, num_items), min(k_prime, num_items)
    sim, query, corpus = mol_corpus(seed, num_items, 8, clusters=8)
    exclude = [[0, 1, 2], [], [num_items - 1], list(range(0, num_items, 5))] * 2 if with_exclude else None
    algorithm = Algorithm.COMB_TOP_K if comb else Algorithm.TOP_K_PER_EMBD
    ref = reference(sim, query, corpus, k, exclude)
    with torch.inference_mode():
        stage = TorchStage(corpus.embeddings)
        res = rails_search(
            sim, query, corpus, k, stage, algorithm=algorithm, k_prime=k_prime, exclude=exclude
        )
        proven = res.exact.nonzero().squeeze(1)
        same_topk(res.scores[proven], res.ids[proven], *(t[proven] for t in ref))
        guaranteed = rails_search(
            sim,
            query,
            corpus,
            k,
            stage,
            algorithm=algorithm,
            k_prime=k_prime,
            exclude=exclude,
            guarantee_exact=True,
        )
    assert bool(guaranteed.exact.all())
    same_topk(guaranteed.scores, guaranteed.ids, *ref)


def test_the_bound_is_the_k_prime_th_score_for_a_dot_product() -> None:
    # Pq = Px = 1: the bound is the K'-th largest score itself, so K' = k never proves the k-th result
    # (an item outside could tie with it) and K' = k + 1 always does when scores are distinct.
    sim = DotProductSimilarity(4, temperature=0.5)
    torch.manual_seed(0)
    query, corpus = sim.query_side(torch.randn(6, 4)), sim.item_side(torch.randn(100, 4))
    stage = TorchStage(corpus.embeddings)
    for k in (1, 5):
        assert not bool(rails_search(sim, query, corpus, k, stage, k_prime=k).exact.any())
        assert bool(rails_search(sim, query, corpus, k, stage, k_prime=k + 1).exact.all())


def test_the_bound_proves_some_results_on_clustered_data(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(0, 1000, 8, clusters=16)
    with torch.inference_mode():
        res = rails_search(sim, query, corpus, 1, TorchStage(corpus.embeddings), k_prime=200)
        _, ref = exact_search(sim, query, corpus, 1)
    assert bool(res.exact.any())  # the test would be vacuous otherwise
    assert torch.equal(res.ids[res.exact], ref[res.exact])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_the_mean_index_is_exact_unless_asked_otherwise(mol_corpus: Callable[..., tuple], kind: str) -> None:
    _, query, corpus = mol_corpus(7, 3000, 8)
    means = query.embeddings.mean(dim=1)  # (B, d)
    want_values, want_rows = TorchStage(corpus.embeddings).mean(means, 300, StageParams())
    exact = FaissStage.build(kind, corpus.embeddings, nlist=60)
    assert exact.exact_mean
    assert not exact.exact
    values, rows = exact.mean(means, 300, StageParams(nprobe=1, ef_search=16))
    torch.testing.assert_close(values, want_values, atol=1e-5, rtol=0)
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(rows, want_rows, strict=True))
    approximate = FaissStage.build(kind, corpus.embeddings, nlist=60, exact_mean=False)
    assert not approximate.exact_mean
    _, rows = approximate.mean(means, 300, StageParams(nprobe=1, ef_search=16))
    # one IVF list of 60 (or a narrow HNSW beam) cannot hold all 300 exact best: the knob reaches the index
    assert any(set(a.tolist()) != set(b.tolist()) for a, b in zip(rows, want_rows, strict=True))


def test_flat_faiss_stage_matches_torch_stage(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(6, 400, 4)
    with torch.inference_mode():
        a = rails_search(sim, query, corpus, 5, TorchStage(corpus.embeddings), k_prime=16)
        b = rails_search(sim, query, corpus, 5, FaissStage.build("flat", corpus.embeddings), k_prime=16)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)
    assert torch.equal(a.exact, b.exact)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_stages_never_claim_exactness(mol_corpus: Callable[..., tuple], kind: str) -> None:
    sim, query, corpus = mol_corpus(7, 800, 4)
    stage = FaissStage.build(kind, corpus.embeddings)
    with torch.inference_mode():
        res = rails_search(sim, query, corpus, 5, stage, k_prime=500)
    assert not bool(res.exact.any())
    with pytest.raises(ConfigError, match="exact candidate stage"):
        rails_search(sim, query, corpus, 5, stage, guarantee_exact=True)


def test_bad_parameters(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(0, 50, 1)
    stage = TorchStage(corpus.embeddings)
    with pytest.raises(ConfigError, match="k_prime"):
        rails_search(sim, query, corpus, 5, stage, k_prime=0)
    with pytest.raises(ConfigError, match="k_prime_avg"):
        rails_search(sim, query, corpus, 5, stage, k_prime_avg=0)
    with pytest.raises(ConfigError, match="per-component"):
        rails_search(sim, query, corpus, 5, stage, algorithm=Algorithm.TOP_K_AVG, guarantee_exact=True)
    with pytest.raises(ValueError, match="not a valid Algorithm"):
        rails_search(sim, query, corpus, 5, stage, algorithm="bogus")  # type: ignore[arg-type]
