"""Adaptive retrieval (AXN): the factorization against a naive per-row solve, search against exact top-k."""

from __future__ import annotations

import pytest
import torch

from mol_core.errors import ConfigError, ShapeError
from mol_core.similarity import QuerySide
from mol_index.search.adaptive import adaptive_search, factorize, fit_query_map, sparse_score_matrix


def linear_scorer(true_queries: torch.Tensor, true_items: torch.Tensor):  # type: ignore[no-untyped-def]
    def score(handles: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (true_queries[handles].unsqueeze(1) * true_items[rows]).sum(-1)

    return score


def test_one_als_sweep_matches_a_naive_per_row_solve() -> None:
    gen = torch.Generator().manual_seed(0)
    q, n, r, m, reg = 12, 30, 4, 6, 0.3
    rows = torch.stack([torch.randperm(n, generator=gen)[:m] for _ in range(q)])
    scores = torch.randn(q, m, generator=gen)
    v0, u0 = torch.randn(n, r, generator=gen), torch.randn(q, r, generator=gen)
    items, queries, _ = factorize(rows, scores, v0, u0, reg=reg, iterations=1, item_block=7)
    want_u = torch.empty(q, r)
    for i in range(q):
        a = v0[rows[i]]
        want_u[i] = torch.linalg.solve(a.T @ a + reg * torch.eye(r), a.T @ scores[i] + reg * u0[i])
    torch.testing.assert_close(queries, want_u, atol=1e-4, rtol=1e-4)
    want_v = v0.clone()
    for j in range(n):
        hits = (rows == j).nonzero()
        if len(hits) == 0:
            continue
        a = want_u[hits[:, 0]]
        s = scores[hits[:, 0], hits[:, 1]]
        want_v[j] = torch.linalg.solve(a.T @ a + reg * torch.eye(r), a.T @ s + reg * v0[j])
    torch.testing.assert_close(items, want_v, atol=1e-4, rtol=1e-4)


def test_factorization_fits_a_low_rank_matrix_better_than_its_start() -> None:
    gen = torch.Generator().manual_seed(1)
    q, n, r = 300, 200, 8
    true_u, true_v = torch.randn(q, r, generator=gen), torch.randn(n, r, generator=gen)
    start_v = true_v + 0.5 * torch.randn(n, r, generator=gen)  # a noisy "dual encoder"
    start_u = true_u + 0.5 * torch.randn(q, r, generator=gen)
    handles = torch.arange(q)
    rows, scores = sparse_score_matrix(linear_scorer(true_u, true_v), handles, start_u, start_v, per_query=20)
    assert rows.shape == (q, 20)
    before = float(((start_u.unsqueeze(1) * start_v[rows]).sum(-1) - scores).pow(2).mean().sqrt())
    items, _, rmse = factorize(rows, scores, start_v, start_u, reg=0.01, iterations=15)
    assert rmse < 0.2 * before
    observed = torch.unique(rows)
    # the items the training queries scored moved towards the truth (up to the factorization's gauge:
    # compare the scores they give to held-out true queries, fitted by least squares)
    probe = torch.randn(50, r, generator=gen)
    truth = probe @ true_v[observed].T
    fitted = torch.linalg.lstsq(items[observed], truth.T).solution  # (r, 50)
    fit_error = float((items[observed] @ fitted - truth.T).pow(2).mean())
    start_fit = torch.linalg.lstsq(start_v[observed], truth.T).solution
    start_error = float((start_v[observed] @ start_fit - truth.T).pow(2).mean())
    assert fit_error < 0.5 * start_error


def test_search_with_full_budget_is_exact_and_linear_scorers_are_found_in_two_rounds() -> None:
    gen = torch.Generator().manual_seed(2)
    b, n, r, k = 5, 400, 6, 10
    true_u, items = torch.randn(b, r, generator=gen), torch.randn(n, r, generator=gen)
    scorer = linear_scorer(true_u, items)
    exact = torch.topk(true_u @ items.T, k, dim=1)
    start = true_u + 1.5 * torch.randn(b, r, generator=gen)  # a poor first guess
    full = adaptive_search(scorer, torch.arange(b), start, items, k, budget=n, rounds=1)
    assert torch.equal(full.rows, exact.indices)
    torch.testing.assert_close(full.scores, exact.values)
    assert full.scorer_calls.tolist() == [n] * b
    # the refit after round 1 recovers u exactly (a linear scorer), so round 2 retrieves the true top-k
    adaptive = adaptive_search(scorer, torch.arange(b), start, items, k, budget=40, rounds=2, reg=1e-6)
    assert torch.equal(adaptive.rows, exact.indices)
    assert adaptive.scorer_calls.tolist() == [40] * b
    one_shot = adaptive_search(scorer, torch.arange(b), start, items, k, budget=40, rounds=1)
    assert (one_shot.rows == exact.indices).float().mean() < 1.0  # the first guess alone misses some


def test_first_round_can_retrieve_in_the_dual_space() -> None:
    gen = torch.Generator().manual_seed(4)
    b, n, k = 4, 300, 10
    true_u, items = torch.randn(b, 6, generator=gen), torch.randn(n, 6, generator=gen)  # "factorized"
    dual_items = torch.randn(n, 3, generator=gen)  # another space, another width
    dual_queries = torch.randn(b, 3, generator=gen)
    exact = torch.topk(true_u @ items.T, k, dim=1).indices
    result = adaptive_search(
        linear_scorer(true_u, items),
        torch.arange(b),
        torch.zeros(b, 6),
        items,
        k,
        budget=40,
        rounds=2,
        reg=1e-6,
        start_items=dual_items,
        start_queries=dual_queries,
    )
    assert torch.equal(result.rows, exact)  # round 1 (dual space) gives 20 scores; u is solved from them
    with pytest.raises(ShapeError, match="start_items must be"):
        adaptive_search(
            linear_scorer(true_u, items),
            torch.arange(b),
            torch.zeros(b, 6),
            items,
            k,
            budget=40,
            start_items=dual_items[:5],
            start_queries=dual_queries,
        )


def test_search_respects_exclusions_and_runs_out_of_items_cleanly() -> None:
    gen = torch.Generator().manual_seed(3)
    n, r = 12, 3
    true_u, items = torch.randn(2, r, generator=gen), torch.randn(n, r, generator=gen)
    best = torch.topk(true_u @ items.T, 3, dim=1).indices
    exclude = torch.cat([best, torch.full((2, 1), -1)], dim=1)  # (2, 4), -1 padded
    result = adaptive_search(
        linear_scorer(true_u, items), torch.arange(2), true_u, items, 5, budget=12, rounds=3, exclude=exclude
    )
    for b in range(2):
        assert not set(result.rows[b].tolist()) & set(best[b].tolist())
    assert result.scorer_calls.tolist() == [9, 9]  # only 9 items were left to score


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"k": 0}, ConfigError, "need 1 <= k <= budget <= N"),
        ({"k": 11, "budget": 10}, ConfigError, "need 1 <= k <= budget <= N"),
        ({"budget": 3, "k": 2, "rounds": 4}, ConfigError, "at least one scorer call per round"),
        ({"reg": 0.0}, ConfigError, "reg must be > 0"),
        ({"init_queries": torch.zeros(2, 5)}, ShapeError, "init_queries must be"),
    ],
)
def test_bad_search_arguments(kwargs: dict, error: type[Exception], fragment: str) -> None:
    items = torch.randn(20, 3)
    args = {"k": 2, "budget": 10, "rounds": 2, "reg": 0.1, "init_queries": torch.zeros(2, 3)}
    args |= kwargs
    init = args.pop("init_queries")
    with pytest.raises(error, match=fragment):
        adaptive_search(lambda h, r: torch.zeros(r.shape), torch.arange(2), init, items, **args)


def test_bad_factorization_arguments() -> None:
    with pytest.raises(ShapeError, match="rows and scores must both be"):
        factorize(
            torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 4), torch.zeros(5, 2), torch.zeros(3, 2)
        )
    with pytest.raises(ConfigError, match="per_query must be in"):
        sparse_score_matrix(
            lambda h, r: r.float(), torch.arange(2), torch.zeros(2, 3), torch.zeros(4, 3), per_query=5
        )


def test_query_map_recovers_a_linear_map() -> None:
    gen = torch.Generator().manual_seed(5)
    dual = torch.randn(200, 4, generator=gen)
    true_map = torch.randn(4, 7, generator=gen)
    torch.testing.assert_close(fit_query_map(dual, dual @ true_map, reg=1e-6), true_map, atol=1e-4, rtol=1e-4)


def test_adaptive_index_round_trips_and_is_exact_with_a_full_budget(tmp_path, mol_corpus) -> None:  # type: ignore[no-untyped-def]
    from mol_index import MolIndex, SearchParams, build_adaptive, exact_search

    sim, queries, corpus = mol_corpus(6, 150, 40)  # 40 queries: 32 to train on, 8 to search
    train = QuerySide(queries.embeddings[:32], queries.gating[:32])
    test = QuerySide(queries.embeddings[32:], queries.gating[32:])
    ids = torch.arange(150) * 2 + 1
    index = build_adaptive(MolIndex.build(sim, ids, corpus), train, per_query=20, iterations=3)
    assert index.kind == "adaptive"
    path = index.save(tmp_path / "adaptive")
    loaded = MolIndex.load(path)
    assert loaded.kind == "adaptive"
    assert loaded.parameters["per_query"] == "20"
    params = SearchParams(algorithm="adaptive", budget=40, rounds=4)
    before = index.search_with_info(test, 5, exclude=[[1, 3]] * 8, params=params)
    after = loaded.search_with_info(test, 5, exclude=[[1, 3]] * 8, params=params)
    assert torch.equal(before.ids, after.ids)
    assert before.num_candidates.tolist() == [40] * 8  # scorer calls, never above the budget
    assert not set(before.ids.flatten().tolist()) & {1, 3}
    assert not bool(before.exact.any())  # adaptive search proves nothing
    with torch.inference_mode():
        want_scores, want_rows = exact_search(sim, test, corpus, 5)
    full = loaded.search(test, 5, params=SearchParams(algorithm="adaptive", budget=150, rounds=1))
    assert torch.equal(full[1], ids[want_rows])
    torch.testing.assert_close(full[0], want_scores)
    with pytest.raises(ConfigError, match="budget 3 is below one scorer call per round"):
        loaded.search(test, 2, params=SearchParams(algorithm="adaptive", budget=3, rounds=5))


def test_adaptive_algorithm_needs_an_adaptive_index(mol_corpus) -> None:  # type: ignore[no-untyped-def]
    from mol_index import Algorithm, MolIndex, SearchParams, TorchStage, rails_search

    sim, queries, corpus = mol_corpus(7, 60, 2)
    index = MolIndex.build(sim, torch.arange(60), corpus)
    with pytest.raises(ConfigError, match="algorithm 'adaptive' needs an index of kind 'adaptive'"):
        index.search(queries, 3, params=SearchParams(algorithm="adaptive"))
    with pytest.raises(ConfigError, match="needs an index of that kind"):
        rails_search(sim, queries, corpus, 3, TorchStage(corpus.embeddings), algorithm=Algorithm.ADAPTIVE)
