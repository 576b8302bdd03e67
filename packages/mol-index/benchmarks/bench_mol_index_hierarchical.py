r"""HSNN hierarchical index against exact search and RAILS CombTopK on synthetic clustered MoL corpora.

    python packages/mol-index/benchmarks/bench_mol_index_hierarchical.py --quick --output bench-results/h.json
    python packages/mol-index/benchmarks/bench_mol_index_hierarchical.py --output bench-results/h.json \
        --plot docs/img/hierarchical_cost_vs_n.png  # full: N = 1e5 and 1e6

Corpus: :func:`mol_index.evaluation.synthetic_corpus` (Pq x Px x d = 8 x 4 x 64, random-weight MoL gating,
items in clusters of about 200). For each ``N``:

- ``exact``: :func:`~mol_index.search.exact.exact_search`, the reference top-k of the same run;
- ``hierarchical``: :class:`~mol_index.search.hierarchy.HierarchicalIndex` with two levels and about
  ``sqrt(N)`` leaves (``branching = (b1, b2)``, ``b1 = round(N ** 0.25)``, ``b2 = ceil(sqrt(N) / b1)``),
  searched with several beams ``(beam_1, beam_2)``, plus a beam wide enough to expand every cluster (on a
  few queries: a sanity check that must reach recall 1.0);
- ``comb_topk``: RAILS CombTopK with the exact torch candidate stage (:class:`~mol_index.index.MolIndex`
  with ``stage="torch"``) at a few ``K'``.

Reported per row: recall@k against exact, hit rate of the exact top-1, similarity evaluations per query
(``scored``: cluster centroids + items for the hierarchy, reranked candidates for RAILS, ``N`` for exact),
p50 latency per batch at B = 1 and B = 32 (CPU time of the process, as in bench_mol_index.py), the
speedup over exact at the same B in the same run, and the build time.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index import MolIndex, SearchParams
from mol_index.evaluation import (
    bundle_corpus,
    cpu_latency,
    faiss_flat_mean,
    machine,
    recall,
    split_queries,
    synthetic_corpus,
    write_result,
)
from mol_index.search.exact import exact_search
from mol_index.search.hierarchy import HierarchicalIndex
from mol_index.search.rails import Algorithm

__all__ = ["branching_for", "main", "run"]

_WIDE = 1 << 30  # a beam that expands every cluster
_WIDE_QUERIES = 8  # queries checked with the wide beam (it costs an exact search)


def branching_for(num_items: int) -> tuple[int, int]:
    """Two levels with about ``sqrt(N)`` leaves: ``(round(N ** 0.25), ceil(sqrt(N) / b1))``."""
    first = max(2, round(num_items**0.25))
    return first, max(2, math.ceil(math.sqrt(num_items) / first))


def _bench_corpus(
    sim: Similarity,
    query: QuerySide,
    corpus: ItemSide,
    *,
    b1_queries: int,
    b32_batches: int,
    beams: list[tuple[int, int]],
    k_primes: list[int],
    k: int,
    seed: int,
    log: Callable[[str], None],
    branching: tuple[int, int] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """All rows of one corpus and the sanity failures found."""
    num_items = corpus.num_items
    b1, b32 = split_queries(query, 1, b1_queries), split_queries(query, 32, b32_batches)
    failures: list[str] = []
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        truth = exact_search(sim, query, corpus, k)[1]  # (Q, k)

        def exact(q: QuerySide) -> Any:
            return exact_search(sim, q, corpus, k)

        exact_lat = {"b1": cpu_latency(exact, b1), "b32": cpu_latency(exact, b32) if b32 else None}
        flat = faiss_flat_mean(corpus)
        flat_lat = {"b1": cpu_latency(lambda q: flat(q, k), b1), "b32": None}
        if b32:
            flat_lat["b32"] = cpu_latency(lambda q: flat(q, k), b32)
        flat_ids = flat(query, k)
        rows.append(
            _row(num_items, "exact", "-", "-", 1.0, 1.0, num_items, exact_lat, exact_lat, 0.0, flat_lat)
        )
        log(format_row(rows[-1]))
        rows.append(
            _row(
                num_items,
                "faiss_flat_mean",
                "-",
                "-",
                recall(flat_ids, truth),
                recall(flat_ids, truth[:, :1]),
                num_items,
                flat_lat,
                exact_lat,
                0.0,
                flat_lat,
            )
        )
        log(format_row(rows[-1]))

        branching = branching or branching_for(num_items)
        start = time.perf_counter()
        index = HierarchicalIndex.build(corpus, branching, seed=seed)
        build_s = time.perf_counter() - start
        few = QuerySide(query.embeddings[:_WIDE_QUERIES], _head(query.gating, _WIDE_QUERIES))
        wide = index.search(sim, few, k, beam=_WIDE)
        wide_recall = recall(wide.rows, truth[:_WIDE_QUERIES])
        if wide_recall < 1.0:
            failures.append(f"N={num_items}: the wide beam's recall is {wide_recall}, not 1.0")
        log(f"N={num_items}: branching {branching}, {index.num_leaves} leaves, build {build_s:.1f} s")
        for beam in beams:

            def hier(q: QuerySide, beam: tuple[int, int] = beam) -> Any:
                return index.search(sim, q, k, beam=beam)

            found = hier(query)
            if not bool((found.rows >= 0).all()):
                failures.append(f"N={num_items}, beam {beam}: fewer than k results")
            lat = {"b1": cpu_latency(hier, b1), "b32": cpu_latency(hier, b32) if b32 else None}
            row = _row(
                num_items,
                "hierarchical",
                f"{branching[0]}x{branching[1]}",
                f"{beam[0]},{beam[1]}",
                recall(found.rows, truth),
                recall(found.rows, truth[:, :1]),
                float(found.scored.float().mean()),
                lat,
                exact_lat,
                build_s,
                flat_lat,
            )
            rows.append(row)
            log(format_row(row))

        start = time.perf_counter()
        mol_index = MolIndex.build(sim, torch.arange(num_items), corpus, stage="torch")
        rails_build_s = time.perf_counter() - start
        for k_prime in k_primes:
            params = SearchParams(algorithm=Algorithm.COMB_TOP_K, k_prime=k_prime)

            def rails(q: QuerySide, params: SearchParams = params) -> Any:
                return mol_index.search_with_info(q, k, params=params)

            result = rails(query)
            lat = {"b1": cpu_latency(rails, b1), "b32": cpu_latency(rails, b32) if b32 else None}
            row = _row(
                num_items,
                "comb_topk",
                "torch",
                f"K'={k_prime}",
                recall(result.ids, truth),
                recall(result.ids, truth[:, :1]),
                float(result.num_candidates.float().mean()),
                lat,
                exact_lat,
                rails_build_s,
                flat_lat,
            )
            rows.append(row)
            log(format_row(row))
    return rows, failures


def _head(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if t is None else t[:n]


def _row(
    num_items: int,
    method: str,
    structure: str,
    setting: str,
    recall: float,
    top1: float,
    scored: float,
    lat: dict[str, Any],
    exact_lat: dict[str, Any],
    build_s: float,
    flat_lat: dict[str, Any],
) -> dict[str, Any]:
    def ratio(batch: str, reference: dict[str, Any], inverse: bool) -> float | None:
        if lat[batch] is None or reference[batch] is None:
            return None
        mine, ref = lat[batch]["p50_ms"], reference[batch]["p50_ms"]
        return float(mine / ref if inverse else ref / mine)

    def speedup(batch: str) -> float | None:
        return ratio(batch, exact_lat, inverse=False)

    return {
        "N": num_items,
        "method": method,
        "structure": structure,
        "setting": setting,
        "recall": recall,
        "top1_hit": top1,
        "scored": scored,
        "b1": lat["b1"],
        "b32": lat["b32"],
        "speedup_b1": speedup("b1"),
        "speedup_b32": speedup("b32"),
        "vs_flat_b1": ratio("b1", flat_lat, inverse=True),  # p50 over the FAISS flat mean scan's
        "vs_flat_b32": ratio("b32", flat_lat, inverse=True),
        "build_s": build_s,
    }


HEADER = (
    f"{'N':>8} {'method':>12} {'structure':>9} {'setting':>8} {'recall':>7} {'top1':>5} {'scored':>9} "
    f"{'B1 p50':>8} {'B32 p50':>8} {'x B1':>6} {'x B32':>6} {'build s':>7} {'/flat1':>6}"
)


def format_row(row: dict[str, Any]) -> str:
    """One table line (latencies in ms, speedups over exact at the same B)."""
    b32 = row["b32"]["p50_ms"] if row["b32"] else float("nan")
    x32 = row["speedup_b32"] if row["speedup_b32"] is not None else float("nan")
    vs_flat = row.get("vs_flat_b1") or float("nan")
    return (
        f"{row['N']:>8} {row['method']:>12} {row['structure']:>9} {row['setting']:>8} {row['recall']:>7.4f} "
        f"{row['top1_hit']:>5.3f} {row['scored']:>9.0f} {row['b1']['p50_ms']:>8.2f} {b32:>8.1f} "
        f"{row['speedup_b1']:>6.1f} {x32:>6.1f} {row['build_s']:>7.1f} {vs_flat:>6.2f}"
    )


def run(
    *,
    sizes: list[int],
    beams: list[tuple[int, int]],
    k_primes: list[int],
    b1_queries: int,
    b32_batches: int,
    k: int = 10,
    seed: int = 0,
    bundle: Path | None = None,
    histories: Path | None = None,
    bundle_items: int | None = None,
    bundle_noise: float = 0.5,
    branching: tuple[int, int] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Runs the benchmark (see the module docstring); returns the JSON-ready result.

    ``sizes`` are synthetic corpora; ``bundle`` adds a model bundle's items (queries from ``histories``),
    resampled to ``bundle_items`` items when given (:func:`~mol_index.evaluation.resample_items`).
    ``branching`` replaces :func:`branching_for` for every corpus.
    """
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    num_queries = max(b1_queries, 32 * b32_batches, _WIDE_QUERIES)
    corpora: list[tuple[str, Callable[[], tuple[Similarity, QuerySide, ItemSide]]]] = [
        ("synthetic", functools.partial(synthetic_corpus, n, num_queries, seed=seed)) for n in sizes
    ]
    if bundle is not None:
        corpora.append(
            (
                f"bundle:{bundle.name}"
                + ("" if bundle_items is None else f", resampled to {bundle_items} (noise {bundle_noise})"),
                functools.partial(
                    bundle_corpus,
                    bundle,
                    histories,
                    num_queries,
                    seed=seed,
                    num_items=bundle_items,
                    noise=bundle_noise,
                ),
            )
        )
    for label, make in corpora:
        sim, query, corpus = make()
        log(f"corpus {label}: N = {corpus.num_items}")
        rows, bad = _bench_corpus(
            sim,
            query,
            corpus,
            branching=branching,
            b1_queries=b1_queries,
            b32_batches=b32_batches,
            beams=beams,
            k_primes=k_primes,
            k=k,
            seed=seed,
            log=log,
        )
        for row in rows:
            row["corpus"] = label
        results += rows
        failures += bad
    return {
        "benchmark": "mol_index_hierarchical",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "Pq": 8,
            "Px": 4,
            "d": 64,
            "tau": 0.05,
            "k": k,
            "queries": num_queries,
            "b1_queries": b1_queries,
            "b32_batches": b32_batches,
            "branching": list(branching) if branching else "(round(N^0.25), ceil(sqrt(N) / b1))",
            "bundle": None if bundle is None else str(bundle),
            "histories": None if histories is None else str(histories),
            "bundle_items": bundle_items,
            "bundle_noise": None if bundle_items is None else bundle_noise,
            "kmeans": "20 Lloyd iterations, k-means++, at most 256 training points per cluster",
            "wide_beam_queries": _WIDE_QUERIES,
            "latency": "CPU time of the process per batch (time.process_time), wall time in wall_*",
        },
        "results": results,
        "failures": failures,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Similarity evaluations per query against N (log-log): one line per beam and per K', and exact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    rows = result["results"]
    for method, style in (("exact", "k-."), ("hierarchical", "o-"), ("comb_topk", "s--")):
        settings = {r["setting"]: r["scored"] for r in rows if r["method"] == method}
        for setting in sorted(settings, key=settings.__getitem__, reverse=True):
            line = sorted(
                (r for r in rows if r["method"] == method and r["setting"] == setting), key=lambda r: r["N"]
            )
            label = "exact (N)" if method == "exact" else f"{method} {setting}"
            ax.plot([r["N"] for r in line], [r["scored"] for r in line], style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("corpus size N")
    ax.set_ylabel("similarity evaluations per query")
    ax.set_title(f"HSNN hierarchy vs RAILS CombTopK vs exact (k = {result['config']['k']})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _beam(text: str) -> tuple[int, int]:
    first, _, second = text.partition(",")
    return int(first), int(second or first)


def main(argv: list[str] | None = None) -> int:
    """CLI of the benchmark; exit 1 when a sanity check fails (wide-beam recall < 1, missing results)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="N = 2,000 and 10,000, fewer queries (under a minute)"
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        help="synthetic corpus sizes (default 100,000 1,000,000; none: --bundle only)",
    )
    parser.add_argument(
        "--beams", type=_beam, nargs="+", help="beams as 'beam1,beam2' (default 2,4 4,8 8,16 16,32)"
    )
    parser.add_argument("--k-primes", type=int, nargs="+", help="RAILS CombTopK K' (default 16 64)")
    parser.add_argument("--b1-queries", type=int, help="single queries timed at B = 1 (default 32; quick 16)")
    parser.add_argument("--b32-batches", type=int, help="batches of 32 queries timed (default 2; quick 1)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: single-core CPU time)"
    )
    parser.add_argument(
        "--branching", type=_beam, help="clusters per level as 'b1,b2' (default round(N^0.25), sqrt(N) / b1)"
    )
    parser.add_argument(
        "--bundle", type=Path, help="also benchmark the items of this mol-train model bundle (e.g. ML-1M)"
    )
    parser.add_argument(
        "--histories",
        type=Path,
        help="'user item' chronological file whose users' histories (without the last item) are the "
        "--bundle queries; default: random 20-item histories",
    )
    parser.add_argument(
        "--bundle-items",
        type=int,
        help="resample the --bundle's items to this many, made by its item tower from perturbed copies of "
        "its item representations (mol_index.evaluation.resample_items)",
    )
    parser.add_argument(
        "--bundle-noise",
        type=float,
        default=0.5,
        help="perturbation of the --bundle-items copies (default 0.5)",
    )
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path")
    parser.add_argument("--plot", type=Path, help="write a scored-items-vs-N PNG here (needs matplotlib)")
    args = parser.parse_args(argv)
    if (args.histories is not None or args.bundle_items is not None) and args.bundle is None:
        parser.error("--histories and --bundle-items need --bundle")
    if args.bundle_items is not None and args.bundle_items < 1:
        parser.error(f"--bundle-items must be a positive integer; got {args.bundle_items}")
    if args.branching is not None and min(args.branching) < 2:
        parser.error(f"--branching needs at least 2 clusters per level; got {args.branching}")
    torch.set_num_threads(args.threads)
    print(HEADER, flush=True)
    default_sizes = [2_000, 10_000] if args.quick else [100_000, 1_000_000]
    result = run(
        sizes=(args.sizes if args.sizes is not None else default_sizes),
        bundle=args.bundle,
        histories=args.histories,
        bundle_items=args.bundle_items,
        bundle_noise=args.bundle_noise,
        branching=args.branching,
        beams=args.beams or [(2, 4), (4, 8), (8, 16), (16, 32)],
        k_primes=args.k_primes or [16, 64],
        b1_queries=args.b1_queries or (16 if args.quick else 32),
        b32_batches=args.b32_batches if args.b32_batches is not None else (1 if args.quick else 2),
        log=lambda line: print(line, flush=True),
    )
    result["mode"] = "quick" if args.quick else "full"
    if args.output:
        write_result(result, args.output)
    if args.plot:
        plot(result, args.plot)
    if result["failures"]:
        print("FAIL: " + "; ".join(result["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
