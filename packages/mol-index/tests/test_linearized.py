"""The linearized search (mol_index.search.linearized) against the naive reference top-k."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import pytest
import torch

from mol_core.errors import ConfigError
from mol_core.similarity import DotProductSimilarity, ItemSide, MoLSimilarity, QuerySide
from mol_index import (
    FaissStage,
    LinearizedParams,
    MolIndex,
    SearchParams,
    StageParams,
    TorchStage,
    linearized_search,
    load_index,
)
from mol_index.search.candidates import linearized_item_vectors


def test_scoring_every_item_is_exact_search(
    mol_corpus: Callable[..., tuple], reference: Callable[..., tuple], same_topk: Callable[..., None]
) -> None:
    sim, query, corpus = mol_corpus(0, 300, 5)
    ref_scores, ref_ids, full = reference(sim, query, corpus, 10)
    with torch.inference_mode():
        found = linearized_search(
            sim, query, corpus, 10, TorchStage(corpus.embeddings), k_prime=20, k_prime_avg=300, rounds=1
        )
    same_topk(found.scores, found.ids, ref_scores, ref_ids, full)
    assert bool(found.exact.all())
    assert found.num_candidates.tolist() == [300] * 5


def test_dot_product_proxy_is_exact() -> None:
    # with one component the fitted proxy is the similarity itself: its top k' holds the exact top-k
    gen = torch.Generator().manual_seed(3)
    sim = DotProductSimilarity(12).eval()
    corpus = ItemSide(torch.randn(500, 1, 12, generator=gen), None)
    query = QuerySide(torch.randn(4, 1, 12, generator=gen), None)
    with torch.inference_mode():
        found = linearized_search(
            sim, query, corpus, 5, TorchStage(corpus.embeddings), k_prime=5, k_prime_avg=20, rounds=1
        )
        want = sim.score_pairs(query, corpus).topk(5, dim=1)
    assert torch.equal(found.ids, want.indices)
    torch.testing.assert_close(found.scores, want.values)
    assert not bool(found.exact.any())  # 25 of 500 items scored: nothing proven


def test_finds_most_of_the_exact_top_k_from_few_candidates(
    mol_corpus: Callable[..., tuple], reference: Callable[..., tuple]
) -> None:
    sim, query, corpus = mol_corpus(1, 4000, 16, clusters=40)
    _, ref_ids, _ = reference(sim, query, corpus, 10)
    stage = TorchStage(corpus.embeddings)
    with torch.inference_mode():
        found = linearized_search(sim, query, corpus, 10, stage, k_prime=200, k_prime_avg=200, rounds=2)
        mean_only = linearized_search(sim, query, corpus, 10, stage, k_prime=1, k_prime_avg=200, rounds=1)
    recall = (found.ids.unsqueeze(2) == ref_ids.unsqueeze(1)).any(2).float().mean()
    recall_mean = (mean_only.ids.unsqueeze(2) == ref_ids.unsqueeze(1)).any(2).float().mean()
    assert int(found.num_candidates.max()) <= 600  # at most 15 % of the corpus scored
    assert float(recall) >= 0.9
    assert float(recall) > float(recall_mean)  # the fitted rounds add what the mean proxy missed
    # results are sorted, distinct and exactly scored
    assert bool((found.scores[:, :-1] >= found.scores[:, 1:]).all())
    for b in range(query.batch_size):
        assert len(set(found.ids[b].tolist())) == 10
    with torch.inference_mode():
        one = QuerySide(query.embeddings[:1], query.gating[:1])
        rescored = sim.score_pairs(
            one, ItemSide(corpus.embeddings[found.ids[0]], corpus.gating[found.ids[0]])
        )
    torch.testing.assert_close(found.scores[0], rescored[0], atol=1e-5, rtol=0)


def test_exclusions_are_honoured(mol_corpus: Callable[..., tuple], reference: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(2, 200, 3)
    _, best, _ = reference(sim, query, corpus, 5)
    exclude = [best[0, :3].tolist(), [], [7, 7, -1, 999]]  # repeated, padding and unknown rows too
    ref_scores, ref_ids, _ = reference(sim, query, corpus, 5, exclude)
    with torch.inference_mode():
        found = linearized_search(
            sim,
            query,
            corpus,
            5,
            TorchStage(corpus.embeddings),
            k_prime=10,
            k_prime_avg=200,
            rounds=1,
            exclude=exclude,
        )
    assert not set(found.ids[0].tolist()) & set(exclude[0])
    assert torch.equal(found.ids, ref_ids)
    torch.testing.assert_close(found.scores, ref_scores, atol=1e-4, rtol=0)


def test_fewer_items_than_k_after_exclusion_pads(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(4, 12, 1)
    with torch.inference_mode():
        found = linearized_search(
            sim,
            query,
            corpus,
            5,
            TorchStage(corpus.embeddings),
            k_prime=12,
            k_prime_avg=12,
            rounds=1,
            exclude=[list(range(9))],
        )
    assert found.ids[0, 3:].tolist() == [-1, -1]
    assert bool(torch.isneginf(found.scores[0, 3:]).all())


def test_faiss_stages_match_the_torch_stage_and_survive_save_and_load(
    mol_corpus: Callable[..., tuple], tmp_path: Path
) -> None:
    sim, query, corpus = mol_corpus(5, 2000, 6, clusters=20)
    params = LinearizedParams(k_prime=100, k_prime_avg=100, rounds=2)
    exact_index = MolIndex.build(sim, torch.arange(2000), corpus)
    flat_index = MolIndex.build(sim, torch.arange(2000), corpus, stage="flat", linearized=True)
    want = exact_index.search(query, 10, params=params)
    got = flat_index.search(query, 10, params=params)
    assert torch.equal(got[1], want[1])  # FAISS flat is exact: the same candidates, the same result
    ivf = MolIndex.build(sim, torch.arange(2000), corpus, stage="ivf", nlist=16, linearized=True)
    ivf_params = LinearizedParams(k_prime=100, k_prime_avg=100, rounds=2, nprobe=4)
    before = ivf.search(query, 10, params=ivf_params)
    ivf.save(tmp_path / "ivf")
    loaded = load_index(tmp_path / "ivf")
    after = loaded.search(
        query, 10, params=SearchParams(algorithm="linearized", k_prime=100, rounds=2, nprobe=4)
    )
    assert torch.equal(after[1], before[1])
    assert (tmp_path / "ivf" / "faiss" / "concatenated.faiss").exists()


def test_a_faiss_stage_without_the_concatenated_index_is_refused(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(6, 300, 2)
    index = MolIndex.build(sim, torch.arange(300), corpus, stage="flat")
    with pytest.raises(ConfigError, match="--linearized"):
        index.search(query, 5, params=LinearizedParams())
    stage = FaissStage.build("flat", corpus.embeddings)
    with pytest.raises(ConfigError, match="concatenated"):
        stage.concatenated(torch.zeros(1, 32), 3, StageParams())


def test_params_and_bad_values(mol_corpus: Callable[..., tuple]) -> None:
    resolved = SearchParams(algorithm="linearized", k_prime=300, rounds=3).resolve()
    assert resolved == LinearizedParams(k_prime=300, k_prime_avg=300, rounds=3)
    assert SearchParams(algorithm="linearized", k_prime=50, k_prime_avg=80).resolve().k_prime_avg == 80
    early = SearchParams(algorithm="linearized", nprobe=40, early_nprobe=20).resolve()
    assert isinstance(early, LinearizedParams)
    assert (early.nprobe, early.early_nprobe) == (40, 20)
    for bad in ({"k_prime": 0}, {"k_prime_avg": 0}, {"rounds": 0}, {"early_nprobe": 0}):
        with pytest.raises(ConfigError):
            LinearizedParams(**bad)  # type: ignore[arg-type]
    sim, query, corpus = mol_corpus(7, 50, 1)
    stage = TorchStage(corpus.embeddings)
    with pytest.raises(ConfigError, match="rounds"):
        linearized_search(sim, query, corpus, 5, stage, k_prime=5, k_prime_avg=5, rounds=0)
    with pytest.raises(ConfigError, match="early_nprobe"):
        linearized_search(sim, query, corpus, 5, stage, k_prime=5, k_prime_avg=5, rounds=1, early_nprobe=0)
    with pytest.raises(ConfigError):
        linearized_search(sim, query, corpus, 51, stage, k_prime=5, k_prime_avg=5, rounds=1)


class _LinearGateMoL(MoLSimilarity):
    """A MoL whose mixture is linear in the component logits and the item gating features:
    ``0.01 * sum_p l_p + 10 <c, h(x)>`` (so a proxy over both is the score itself)."""

    def mix_scores(
        self, logits: torch.Tensor, query_gating: torch.Tensor | None, item_gating: torch.Tensor | None
    ) -> torch.Tensor:
        assert item_gating is not None
        weights = torch.linspace(-3.0, 3.0, item_gating.shape[-1])  # (P,)
        return 0.01 * logits.sum(dim=-1) + 10.0 * (item_gating * weights).sum(dim=-1)


def test_the_item_gating_features_make_a_gate_linear_proxy_exact(mol_corpus: Callable[..., tuple]) -> None:
    _, query, corpus = mol_corpus(8, 1500, 4)
    linear = _LinearGateMoL(
        query_input_dim=8, item_input_dim=8, query_components=4, item_components=2, component_dim=16
    ).eval()
    with torch.inference_mode():
        want = linear.mix_scores(
            linear.component_logits(query, corpus), query.gating.unsqueeze(1), corpus.gating.unsqueeze(0)
        ).topk(5, dim=1)
        with_gating = linearized_search(
            linear,
            query,
            corpus,
            5,
            TorchStage(corpus.embeddings, corpus.gating),
            k_prime=5,
            k_prime_avg=68,
            rounds=1,
        )
        without = linearized_search(
            linear, query, corpus, 5, TorchStage(corpus.embeddings), k_prime=5, k_prime_avg=68, rounds=1
        )
    assert torch.equal(with_gating.ids, want.indices)
    torch.testing.assert_close(with_gating.scores, want.values, atol=1e-4, rtol=0)
    assert not torch.equal(without.ids, want.indices)  # the gate term is invisible to the component proxy


def test_stages_rank_the_linearized_item_vectors(mol_corpus: Callable[..., tuple]) -> None:
    _, _, corpus = mol_corpus(9, 700, 1)
    vectors = linearized_item_vectors(corpus.embeddings, corpus.gating)  # (N, Px * d + P)
    assert vectors.shape == (700, 2 * 16 + 8)
    assert torch.equal(vectors[:, 32:], corpus.gating)
    u = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    want = (u @ vectors.T).topk(20, dim=1)
    torch_stage = TorchStage(corpus.embeddings, corpus.gating)
    faiss_stage = FaissStage.build("flat", corpus.embeddings, concatenated=True, item_gating=corpus.gating)
    for stage in (torch_stage, faiss_stage):
        assert stage.linearized_width == 40
        values, rows = stage.concatenated(u, 20, StageParams())
        assert torch.equal(rows, want.indices)
        torch.testing.assert_close(values, want.values, atol=1e-4, rtol=0)
        with pytest.raises(ConfigError, match="40 wide"):
            stage.concatenated(u[:, :32], 20, StageParams())
    assert TorchStage(corpus.embeddings).linearized_width == 32
    assert FaissStage.build("flat", corpus.embeddings).linearized_width == 0


def test_an_index_without_the_gating_features_still_searches(mol_corpus: Callable[..., tuple]) -> None:
    # indexes built before the gating features were indexed hold Px * d wide concatenated vectors
    sim, query, corpus = mol_corpus(10, 800, 3)
    old = FaissStage.build("flat", corpus.embeddings, concatenated=True)
    with torch.inference_mode():
        found = linearized_search(sim, query, corpus, 5, old, k_prime=800, k_prime_avg=10, rounds=1)
        everything = linearized_search(
            sim,
            query,
            corpus,
            5,
            TorchStage(corpus.embeddings, corpus.gating),
            k_prime=800,
            k_prime_avg=10,
            rounds=1,
        )
    assert torch.equal(found.ids, everything.ids)  # both scored every item
    other = FaissStage.build("flat", corpus.embeddings[:, :, :8].contiguous(), concatenated=True)
    with pytest.raises(ConfigError, match="16 wide; expected Px \\* d = 32 or Px \\* d \\+ P = 40"):
        linearized_search(sim, query, corpus, 5, other, k_prime=10, k_prime_avg=10, rounds=1)


def test_an_ivf_concatenated_index_holds_float16_vectors(mol_corpus: Callable[..., tuple]) -> None:
    _, _, corpus = mol_corpus(11, 1200, 1)
    stage = FaissStage.build("ivf", corpus.embeddings, nlist=8, concatenated=True, item_gating=corpus.gating)
    assert isinstance(stage.concatenated_index, faiss.IndexIVFScalarQuantizer)
    vectors = linearized_item_vectors(corpus.embeddings, corpus.gating)  # (N, 40)
    u = torch.randn(4, 40, generator=torch.Generator().manual_seed(1))
    want = (u @ vectors.T).topk(20, dim=1)
    values, rows = stage.concatenated(u, 20, StageParams(nprobe=8))  # every list: only fp16 rounding left
    torch.testing.assert_close(values, want.values, atol=2e-2, rtol=2e-3)
    overlap = (rows.unsqueeze(2) == want.indices.unsqueeze(1)).any(2).float().mean()
    assert float(overlap) >= 0.95


def test_dropping_seen_rows_matches_a_set_per_query() -> None:
    from mol_index.search import linearized

    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        batch, num_items = (
            int(torch.randint(1, 5, (1,), generator=gen)),
            int(torch.randint(1, 40, (1,), generator=gen)),
        )
        new = torch.randint(
            -1, num_items, (batch, int(torch.randint(0, 25, (1,), generator=gen))), generator=gen
        )
        seen = torch.randint(
            -3, num_items + 3, (batch, int(torch.randint(0, 25, (1,), generator=gen))), generator=gen
        )
        got = linearized._drop_seen(new, seen)
        for b in range(batch):
            seen_set = {r for r in seen[b].tolist() if 0 <= r < num_items}
            want = [-1 if r < 0 or r in seen_set else r for r in new[b].tolist()]
            assert got[b].tolist() == want


@pytest.mark.parametrize("with_dead_rows", [False, True])
def test_the_fit_matches_a_float64_least_squares_reference(with_dead_rows: bool) -> None:
    from mol_index.search import linearized

    gen = torch.Generator().manual_seed(4)
    batch, rows, width = 3, 200, 9
    design = 5.0 + torch.randn(batch, rows, width, generator=gen)  # columns far from zero mean
    slopes = torch.randn(batch, width, generator=gen)
    target = (design * slopes.unsqueeze(1)).sum(2) + 0.01 * torch.randn(batch, rows, generator=gen) - 3.0
    weights = None
    if with_dead_rows:
        weights = (torch.rand(batch, rows, generator=gen) > 0.3).float()
        design = design.masked_fill(weights.unsqueeze(2) == 0, 0.0)
        target = target * weights
    got = linearized._least_squares(design, target, weights)  # (B, F)
    for b in range(batch):
        kept = slice(None) if weights is None else weights[b].bool()
        x = torch.cat([design[b][kept], torch.ones(design[b][kept].shape[0], 1)], dim=1).double()
        want = torch.linalg.lstsq(x, target[b][kept].double().unsqueeze(1)).solution[:width, 0]
        torch.testing.assert_close(got[b].double(), want, atol=1e-4, rtol=1e-4)


def test_the_mean_index_keeps_its_nprobe_and_the_concatenated_one_visits_four_times_as_many(
    mol_corpus: Callable[..., tuple],
) -> None:
    sim, query, corpus = mol_corpus(12, 2000, 2)
    stage = FaissStage.build(
        "ivf", corpus.embeddings, nlist=100, exact_mean=False, concatenated=True, item_gating=corpus.gating
    )
    assert stage.default_nprobe == 8  # max(8, round(sqrt(100) / 2))
    assert stage.default_concatenated_nprobe == 32
    visited: dict[str, list[int]] = {"mean": [], "concatenated": []}
    for name in visited:
        index = getattr(stage, f"{name}_index")
        original = index.search

        def search(
            x: Any, k: int, *, params: Any = None, _original: Any = original, _name: str = name
        ) -> Any:
            visited[_name].append(params.nprobe)
            return _original(x, k, params=params)

        index.search = search
    with torch.inference_mode():
        linearized_search(sim, query, corpus, 5, stage, k_prime=50, k_prime_avg=50, rounds=2)
        linearized_search(
            sim,
            query,
            corpus,
            5,
            stage,
            k_prime=50,
            k_prime_avg=50,
            rounds=1,
            stage_params=StageParams(nprobe=60),
        )
        for nprobe in (None, 40):  # every round but the last at early_nprobe
            linearized_search(
                sim,
                query,
                corpus,
                5,
                stage,
                k_prime=50,
                k_prime_avg=50,
                rounds=3,
                stage_params=StageParams(nprobe=nprobe),
                early_nprobe=12,
            )
    assert visited == {"mean": [8] * 4, "concatenated": [32, 32, 60, 12, 12, 32, 12, 12, 40]}
    small = FaissStage.build("ivf", corpus.embeddings, nlist=20, concatenated=True, item_gating=corpus.gating)
    assert small.default_concatenated_nprobe == 20  # never more than nlist
