"""The fused C++ CPU kernel: scores and top-k against the torch reference, ties, exclusions, threads,
fallbacks, and the compile-and-cache helper."""

from __future__ import annotations

import pytest
import torch

from mol_core.errors import ConfigError, ShapeError
from mol_core.kernels.isa import builds_here
from mol_core.similarity import DotProductSimilarity, ItemSide, MoLSimilarity, QuerySide
from mol_core.similarity.base import gather_rows
from mol_index import MolIndex, SearchParams
from mol_index.kernels import choose_kernel, exact_topk, mol_cpu
from mol_index.search.candidates import TorchStage
from mol_index.search.exact import exact_search
from mol_index.search.linearized import linearized_search
from mol_index.search.rails import Algorithm, SearchResult, rails_search

needs_kernel = pytest.mark.skipif(
    mol_cpu.unavailable_reason() is not None, reason=f"CPU kernel unavailable: {mol_cpu.unavailable_reason()}"
)


@pytest.fixture(autouse=True, params=builds_here())
def kernel_build(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with each build of the kernel this CPU runs (AVX2; AVX-512 where there is one)."""
    monkeypatch.setenv("MOL_CPU_ISA", request.param)
    return str(request.param)


def _mol(pq: int, px: int, dim: int, hidden: int, num_items: int, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    sim = MoLSimilarity(
        query_input_dim=12,
        item_input_dim=12,
        query_components=pq,
        item_components=px,
        component_dim=dim,
        gating_hidden_dim=hidden,
    ).eval()
    with torch.inference_mode():
        corpus = sim.item_side(torch.randn(num_items, 12))
        query = sim.query_side(torch.randn(batch, 12))
    return sim, query, corpus


# (Pq, Px, d, hidden, N, B): the compiled default shape, ragged P (not a multiple of 8), a hidden width
# that is not a multiple of 16, d = 8, one component, N below one tile and not a multiple of the tile.
SHAPES = [
    (8, 4, 64, 128, 1003, 3),
    (3, 5, 16, 20, 257, 2),
    (1, 1, 8, 1, 5, 1),
    (16, 16, 32, 64, 100, 2),
    (9, 2, 24, 33, 61, 4),
]


@needs_kernel
@pytest.mark.parametrize(("pq", "px", "dim", "hidden", "num_items", "batch"), SHAPES)
def test_scores_match_score_pairs(
    pq: int, px: int, dim: int, hidden: int, num_items: int, batch: int
) -> None:
    sim, query, corpus = _mol(pq, px, dim, hidden, num_items, batch)
    with torch.inference_mode():
        want = sim.score_pairs(query, corpus)  # (B, N), the torch formula
        got = mol_cpu.cpu_score_corpus(sim, query, corpus)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


@needs_kernel
@pytest.mark.parametrize(("pq", "px", "dim", "hidden", "num_items", "batch"), SHAPES)
def test_topk_matches_exact_search_with_exclusions(
    pq: int, px: int, dim: int, hidden: int, num_items: int, batch: int
) -> None:
    sim, query, corpus = _mol(pq, px, dim, hidden, num_items, batch, seed=1)
    k = min(10, num_items)
    exclude = [[0, 2, num_items - 1, 10**6]] + [[] for _ in range(batch - 1)]
    with torch.inference_mode():
        want_scores, want_rows = exact_search(sim, query, corpus, k, exclude=exclude)
        got_scores, got_rows = mol_cpu.cpu_exact_search(sim, query, corpus, k, exclude=exclude)
    assert torch.equal(got_rows, want_rows)
    torch.testing.assert_close(got_scores, want_scores, rtol=1e-5, atol=2e-5)
    assert not set(got_rows[0].tolist()) & {0, 2, num_items - 1}


@needs_kernel
def test_large_gate_values_take_the_max_shift_path() -> None:
    # gate values above 80 would overflow exp without subtracting the maximum: the kernel must shift
    sim, query, corpus = _mol(8, 4, 64, 128, 97, 2)
    with torch.no_grad():
        sim.gating.logits_mlp.out.bias[::3] += 300.0
    with torch.inference_mode():
        torch_float = sim.score_pairs(query, corpus)
        got = mol_cpu.cpu_score_corpus(sim, query, corpus)
        # gates near 300 amplify float32 rounding, so both are held to a float64 reference
        as_double = ItemSide(corpus.embeddings.double(), corpus.gating.double())
        query_double = QuerySide(query.embeddings.double(), query.gating.double())
        exact = sim.double().score_pairs(query_double, as_double)
    assert bool(torch.isfinite(got).all())
    kernel_error = (got.double() - exact).abs().max().item()
    torch_error = (torch_float.double() - exact).abs().max().item()
    assert kernel_error <= 2 * torch_error + 1e-5, (kernel_error, torch_error)


@needs_kernel
def test_ties_go_to_the_smaller_row_wherever_the_copies_sit() -> None:
    sim, query, corpus = _mol(8, 4, 64, 128, 40, 2)
    # rows 3, 17 and 38 are copies of row 29: equal items must get bit-equal scores in any tile position
    order = torch.arange(40)
    order[[3, 17, 38]] = 29
    dup = ItemSide(corpus.embeddings[order].contiguous(), corpus.gating[order].contiguous())
    with torch.inference_mode():
        scores = mol_cpu.cpu_score_corpus(sim, query, dup)
        assert torch.equal(scores[:, 3], scores[:, 29])
        assert torch.equal(scores[:, 17], scores[:, 38])
        _, rows = mol_cpu.cpu_exact_search(sim, query, dup, 40)
        _, want = exact_search(sim, query, dup, 40)
    for b in range(2):
        ranked = rows[b].tolist()
        assert ranked.index(3) < ranked.index(17) < ranked.index(29) < ranked.index(38)
    assert torch.equal(rows, want)


@needs_kernel
def test_k_equal_to_n_everything_excluded_and_k_above_n() -> None:
    sim, query, corpus = _mol(4, 2, 16, 16, 7, 2)
    with torch.inference_mode():
        scores, rows = mol_cpu.cpu_exact_search(sim, query, corpus, 7, exclude=[list(range(7)), [6]])
    assert rows[0].tolist() == [-1] * 7
    assert bool(torch.isneginf(scores[0]).all())
    assert rows[1, -1].item() == -1
    assert sorted(rows[1, :6].tolist()) == list(range(6))
    for search in (exact_search, mol_cpu.cpu_exact_search):
        with pytest.raises(ConfigError, match="k"):
            search(sim, query, corpus, 8)


@needs_kernel
def test_threads_split_items_without_changing_a_score() -> None:
    sim, query, corpus = _mol(8, 4, 64, 128, 3001, 3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mol_cpu.cpu_score_corpus(sim, query, corpus)
        torch.set_num_threads(2)
        two = mol_cpu.cpu_score_corpus(sim, query, corpus)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_unsupported_inputs_are_named() -> None:
    dot = DotProductSimilarity(8)
    assert "MoLSimilarity" in str(mol_cpu.unsupported_reason(dot))
    sim, query, corpus = _mol(2, 2, 12, 8, 10, 1)
    assert "divisible by 8" in str(mol_cpu.unsupported_reason(sim))
    sim, query, corpus = _mol(2, 2, 16, 8, 10, 1)
    assert mol_cpu.unsupported_reason(sim, query, corpus) is None
    half = QuerySide(query.embeddings.bfloat16(), query.gating)
    assert "float32" in str(mol_cpu.unsupported_reason(sim, half, corpus))
    sim.train()
    assert "training mode" in str(mol_cpu.unsupported_reason(sim))

    class OwnMixture(MoLSimilarity):
        def mix_scores(self, logits, query_gating, item_gating):  # type: ignore[no-untyped-def]
            return logits.sum(dim=-1)

    own = OwnMixture(query_input_dim=4, item_input_dim=4, component_dim=16).eval()
    assert "overrides MoL's scoring (mix_scores)" in str(mol_cpu.unsupported_reason(own))


@needs_kernel
def test_dispatch_auto_cpu_and_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    sim, query, corpus = _mol(4, 2, 16, 16, 50, 2)
    cpu = torch.device("cpu")
    assert choose_kernel("auto", sim, cpu) == "cpu"
    assert choose_kernel("torch", sim, cpu) == "torch"
    dot = DotProductSimilarity(8)
    assert choose_kernel("auto", dot, cpu) == "torch"
    with pytest.raises(ConfigError, match=r"kernel='cpu'.*MoLSimilarity"):
        choose_kernel("cpu", dot, cpu)
    # inputs the kernel cannot take: auto falls back to torch, an explicit cpu names the reason
    half = QuerySide(query.embeddings.double(), query.gating)
    double_corpus = ItemSide(corpus.embeddings.double(), corpus.gating)
    sim_double = sim.double()
    with pytest.raises(ConfigError, match="kernel='cpu'"):
        exact_topk(sim_double, half, double_corpus, 5, kernel="cpu")
    monkeypatch.setenv("MOL_CPU_KERNEL", "0")
    assert choose_kernel("auto", sim.float(), cpu) == "torch"
    with pytest.raises(ConfigError, match="MOL_CPU_KERNEL=0"):
        choose_kernel("cpu", sim, cpu)


@needs_kernel
def test_index_search_with_the_cpu_kernel_returns_the_torch_rows() -> None:
    sim, query, corpus = _mol(8, 4, 64, 128, 500, 3)
    ids = torch.arange(500, dtype=torch.int64) * 7
    index = MolIndex.build(sim, ids, corpus, stage="torch")
    exclude = [[7], [], []]
    got = index.search(query, 10, exclude=exclude, params=SearchParams(algorithm="exact", kernel="cpu"))
    want = index.search(query, 10, exclude=exclude, params=SearchParams(algorithm="exact", kernel="torch"))
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=2e-5)


@needs_kernel
@pytest.mark.parametrize(("pq", "px", "dim", "hidden", "num_items", "batch"), SHAPES[:2])
def test_gathered_scores_and_logits_match_the_torch_scorers(
    pq: int, px: int, dim: int, hidden: int, num_items: int, batch: int
) -> None:
    sim, query, corpus = _mol(pq, px, dim, hidden, num_items, batch, seed=4)
    rows = torch.randint(0, num_items, (batch, 37), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        items = ItemSide(gather_rows(corpus.embeddings, rows), gather_rows(corpus.gating, rows))
        want_scores = sim.score_pairs(query, items)  # (B, X)
        want_logits = sim.component_logits(query, items)  # (B, X, P)
        scores, logits = mol_cpu.cpu_score_gathered(sim, query, corpus, rows, with_logits=True)
        plain, none = mol_cpu.cpu_score_gathered(sim, query, corpus, rows)
    torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(plain, scores)
    assert none is None
    with pytest.raises(ShapeError, match=r"rows must lie in \[0, N"):
        mol_cpu.cpu_score_gathered(sim, query, corpus, rows.clone().fill_(num_items))
    with pytest.raises(ShapeError, match="rows must have shape"):
        mol_cpu.cpu_score_gathered(sim, query, corpus, rows[:1] if batch > 1 else rows.unsqueeze(0))
    # score_into: views into a larger buffer (a search's later round), logits then the items' gating
    p = pq * px
    features = torch.full((batch, 50, 2 * p), 7.0)
    into_scores = torch.full((batch, 50), 7.0)
    scorer = mol_cpu.GatheredScorer(sim, query, corpus)
    scorer.score_into(rows, into_scores[:, 5:42], features[:, 5:42])
    torch.testing.assert_close(into_scores[:, 5:42], scores, rtol=0, atol=0)
    torch.testing.assert_close(features[:, 5:42, :p], logits, rtol=0, atol=0)
    torch.testing.assert_close(features[:, 5:42, p:], gather_rows(corpus.gating, rows), rtol=0, atol=0)
    assert bool((features[:, :5] == 7.0).all())
    assert bool((features[:, 42:] == 7.0).all())
    assert bool((into_scores[:, :5] == 7.0).all())
    assert bool((into_scores[:, 42:] == 7.0).all())
    with pytest.raises(ShapeError, match="features must be float32"):
        scorer.score_into(rows, into_scores[:, 5:42], features[:, 5:42, : p + 1])


@needs_kernel
def test_rails_and_linearized_rerank_with_the_kernel_as_with_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    sim, query, corpus = _mol(8, 4, 64, 128, 800, 4, seed=6)
    stage = TorchStage(corpus.embeddings, corpus.gating)

    def searches() -> list[SearchResult]:
        with torch.inference_mode():
            return [
                rails_search(sim, query, corpus, 10, stage, algorithm=Algorithm.COMB_TOP_K, k_prime=40),
                linearized_search(sim, query, corpus, 10, stage, k_prime=60, k_prime_avg=60, rounds=2),
            ]

    fused = searches()
    monkeypatch.setenv("MOL_CPU_KERNEL", "0")
    reference = searches()
    for got, want in zip(fused, reference, strict=True):
        assert torch.equal(got.ids, want.ids)
        torch.testing.assert_close(got.scores, want.scores, rtol=1e-5, atol=2e-5)


@needs_kernel
def test_a_float64_default_dtype_does_not_reach_the_kernel_buffers() -> None:
    sim, query, corpus = _mol(4, 2, 16, 16, 40, 2)
    with torch.inference_mode():
        want = sim.score_pairs(query, corpus)
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        got = mol_cpu.cpu_score_corpus(sim, query, corpus)
    finally:
        torch.set_default_dtype(before)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


@needs_kernel
def test_the_build_follows_mol_cpu_isa_and_the_component_width(kernel_build: str) -> None:
    assert mol_cpu._build_for(64) == kernel_build
    assert mol_cpu._build_for(24) == "avx2"  # 24 floats: a multiple of AVX2's vector, not of AVX-512's
