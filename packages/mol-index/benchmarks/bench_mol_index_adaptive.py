"""Adaptive retrieval (AXN) against dual-encoder retrieve-and-rerank at equal scorer-call budgets.

    python packages/mol-index/benchmarks/bench_mol_index_adaptive.py --quick --output bench-results/a.json
    python packages/mol-index/benchmarks/bench_mol_index_adaptive.py --output bench-results/a.json  # full

The expensive scorer is the MoL of :func:`mol_index.evaluation.synthetic_corpus` (Pq x Px x d = 8 x 4 x 64,
gating hidden 128, random weights, clustered items), called through ``score_pairs`` on (query, item) pairs;
the cheap dual encoder is the dot product of the mean query component and the mean item component (the
embedding TopKAvg uses). Training queries and test queries are drawn the same way and do not overlap.

For each budget (scorer calls per test query) the benchmark reports recall@1 and recall@100 of the
scorer's exact top-k (:func:`~mol_index.search.exact.exact_search`, same run) for

- ``de-rerank``: the dual encoder's top ``budget`` items, scored, best ``k`` returned;
- ``adaptive (dual items)``: :func:`~mol_index.search.adaptive.adaptive_search` over the dual-encoder item
  embeddings (rounds and query refits, no factorization);
- ``adaptive (factorized)``: the same over the item embeddings of :func:`~mol_index.search.adaptive.factorize`
  (the AXN index): the first round retrieves by the dual encoder, the query starts from its dual embedding
  mapped into the factorized space (:func:`~mol_index.search.adaptive.fit_query_map`, fitted on training
  queries);

and the indexing cost of the factorized index (scorer pairs and seconds for the sparse matrix, seconds for
the factorization) next to a CUR-style dense anchor matrix (``anchors`` training queries scored against
every item, as ANNCUR does), measured on a slice and reported per anchor.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide
from mol_index.evaluation import machine, recall, synthetic_corpus, write_result
from mol_index.search.adaptive import adaptive_search, factorize, fit_query_map, sparse_score_matrix
from mol_index.search.exact import exact_search

__all__ = ["main", "run"]


class CountingScorer:
    """The MoL scorer over one set of queries and a corpus, counting the (query, item) pairs it scores."""

    def __init__(self, similarity: MoLSimilarity, queries: QuerySide, corpus: ItemSide) -> None:
        self.similarity, self.queries, self.corpus = similarity, queries, corpus
        self.pairs = 0

    def __call__(self, handles: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        assert self.queries.gating is not None
        assert self.corpus.gating is not None
        query = QuerySide(self.queries.embeddings[handles], self.queries.gating[handles])
        items = ItemSide(self.corpus.embeddings[rows], self.corpus.gating[rows])
        self.pairs += rows.numel()
        with torch.inference_mode():
            return self.similarity.score_pairs(query, items).float()  # (B, M)


def run(
    *,
    num_items: int,
    train_queries: int,
    test_queries: int,
    per_query: int,
    budgets: list[int],
    rounds: int,
    anchors: int,
    reg: float = 1000.0,
    search_reg: float = 0.1,
    iterations: int = 10,
    seed: int = 0,
    log: Any = print,
) -> dict[str, Any]:
    """Runs the benchmark (see the module docstring); returns the JSON-ready result."""
    sim, queries, corpus = synthetic_corpus(num_items, train_queries + test_queries, seed=seed)
    dual_queries = queries.embeddings.mean(1)  # (Q, d)
    dual_items = corpus.embeddings.mean(1)  # (N, d)
    scorer = CountingScorer(sim, queries, corpus)
    train = torch.arange(train_queries)
    test = torch.arange(train_queries, train_queries + test_queries)

    start = time.perf_counter()
    rows, scores = sparse_score_matrix(scorer, train, dual_queries[train], dual_items, per_query=per_query)
    matrix_s, matrix_pairs = time.perf_counter() - start, scorer.pairs
    start = time.perf_counter()
    items, train_factors, rmse = factorize(
        rows, scores, dual_items, dual_queries[train], reg=reg, iterations=iterations
    )
    query_map = fit_query_map(dual_queries[train], train_factors, reg=reg)  # (d, d)
    factorize_s = time.perf_counter() - start
    # CUR-style anchors: every item scored by `anchors` training queries; timed on up to 8 anchors
    timed = min(anchors, 8)
    start = time.perf_counter()
    for handle in range(timed):
        for lo in range(0, num_items, 65536):
            scorer(torch.tensor([handle]), torch.arange(lo, min(lo + 65536, num_items)).unsqueeze(0))
    cur_s = (time.perf_counter() - start) / timed * anchors
    log(
        f"index: sparse matrix {matrix_pairs} pairs in {matrix_s:.1f} s, factorization {factorize_s:.1f} s "
        f"(rmse {rmse:.3f}); CUR with {anchors} anchors: {anchors * num_items} pairs, about {cur_s:.1f} s"
    )

    test_query = QuerySide(queries.embeddings[test], None if queries.gating is None else queries.gating[test])
    big_k = min(100, min(budgets))
    with torch.inference_mode():
        truth = exact_search(sim, test_query, corpus, big_k)[1]  # (T, 100)
    results = []
    test_dual = dual_queries[test]
    methods: list[tuple[str, torch.Tensor, torch.Tensor, int, torch.Tensor | None]] = [
        ("de-rerank", dual_items, test_dual, 1, None),
        ("adaptive (dual items)", dual_items, test_dual, rounds, None),
        ("adaptive (factorized)", items, test_dual @ query_map, rounds, dual_items),
    ]
    for budget in budgets:
        for name, method_items, init, method_rounds, start_items in methods:
            counter_start = scorer.pairs
            start = time.perf_counter()
            found = adaptive_search(
                scorer,
                test,
                init,
                method_items,
                big_k,
                budget=budget,
                rounds=method_rounds,
                reg=search_reg,
                start_items=start_items,
                start_queries=test_dual,
            )
            seconds = time.perf_counter() - start
            row = {
                "budget": budget,
                "method": name,
                "rounds": method_rounds,
                "recall@1": recall(found.rows[:, :1], truth[:, :1]),
                f"recall@{big_k}": recall(found.rows, truth),
                "scorer_calls_per_query": (scorer.pairs - counter_start) / test_queries,
                "seconds_per_query": seconds / test_queries,
            }
            results.append(row)
            log(
                f"budget {budget:>5} {name:<22} recall@1 {row['recall@1']:.4f} recall@{big_k} "
                f"{row[f'recall@{big_k}']:.4f} calls/query {row['scorer_calls_per_query']:.0f}"
            )
    return {
        "benchmark": "mol_index_adaptive",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "N": num_items,
            "train_queries": train_queries,
            "test_queries": test_queries,
            "per_query": per_query,
            "rounds": rounds,
            "reg": reg,
            "search_reg": search_reg,
            "iterations": iterations,
            "k": big_k,
            "scorer": "MoL 8 x 4 x 64, gating hidden 128, random weights "
            "(mol_index.evaluation.synthetic_corpus)",
            "dual_encoder": "mean query component . mean item component",
        },
        "index": {
            "sparse_pairs": matrix_pairs,
            "sparse_seconds": matrix_s,
            "factorize_seconds": factorize_s,
            "rmse": rmse,
            "cur_anchors": anchors,
            "cur_pairs": anchors * num_items,
            "cur_seconds_estimated": cur_s,
            "cur_seconds_timed_anchors": timed,
        },
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI of the benchmark; exit 1 when a method used more scorer calls than its budget."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="N = 10,000, small budgets (CI)")
    parser.add_argument("--items", type=int, help="N (default 100,000; quick 10,000)")
    parser.add_argument("--train-queries", type=int, help="training queries (default 5,000; quick 500)")
    parser.add_argument("--test-queries", type=int, help="test queries (default 256; quick 64)")
    parser.add_argument("--per-query", type=int, default=100, help="scored items per training query (100)")
    parser.add_argument(
        "--budgets", type=int, nargs="+", help="scorer calls per query (default 100 200 500 1000)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="adaptive rounds (default 5)")
    parser.add_argument(
        "--anchors", type=int, default=100, help="CUR anchor queries for the cost estimate (100)"
    )
    parser.add_argument(
        "--reg",
        type=float,
        default=1000.0,
        help="ridge strength of the factorization (default 1000: of 1, 10, 100, 1000 the best on the quick "
        "configuration; scores reach 1/tau = 20, so the pull to the unit-norm dual items must be strong)",
    )
    parser.add_argument("--search-reg", type=float, default=0.1, help="ridge strength of query refits (0.1)")
    parser.add_argument("--iterations", type=int, default=10, help="ALS sweeps (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(
        num_items=args.items or (10_000 if args.quick else 100_000),
        train_queries=args.train_queries or (500 if args.quick else 5_000),
        test_queries=args.test_queries or (64 if args.quick else 256),
        per_query=args.per_query,
        budgets=args.budgets or ([100, 200] if args.quick else [100, 200, 500, 1000]),
        rounds=args.rounds,
        anchors=args.anchors,
        reg=args.reg,
        search_reg=args.search_reg,
        iterations=args.iterations,
        log=lambda line: print(line, flush=True),
    )
    result["mode"] = "quick" if args.quick else "full"
    if args.output:
        write_result(result, args.output)
    over = [r for r in result["results"] if r["scorer_calls_per_query"] > r["budget"]]
    if over:
        print(f"FAIL: methods over their scorer-call budget: {over}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
