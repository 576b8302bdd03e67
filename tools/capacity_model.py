#!/usr/bin/env python3
"""The capacity model of docs/scaling.md: servers, cores and memory for N items at a QPS and latency target.

    python tools/capacity_model.py                                  # the tables of docs/scaling.md
    python tools/capacity_model.py --qps 5000 --p99-ms 30 --items 1e8
    python tools/capacity_model.py --fanout bench-results/mol_serve_fanout.json   # a new fan-out run

Every input is a measurement recorded in docs/ (the constants below name the run); the model only does
arithmetic on them, with these assumptions, each stated in docs/scaling.md:

- a shard's search time grows linearly with its items (true for exact scans; for IVF candidate stages
  it overestimates, since a probe visits about N / nlist * nprobe items and nlist grows with sqrt(N));
- a shard must answer within the latency budget less the front tier's share, at the shard's p99;
- cores are provisioned at ``--utilization`` (default 0.5) so that queueing does not eat the p99 budget;
- the front tier's cost is a fixed part per call plus a part per shard (bench_mol_serve_fanout.py);
- memory is the index's bytes per item (item tensors + FAISS indexes), times the replicas.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Algorithm:
    """One way to search, measured on one CPU core at N = 1e6 (8 x 4 x 64 MoL unless said otherwise)."""

    name: str
    recall: str
    p99_ms_per_million: float  # B = 1, one core
    cpu_ms_per_query_per_million: float  # at B = 32 (batched, what a loaded server does)
    bytes_per_item: float
    source: str


#: docs/mol-index.md, N = 1,000,000, run F1b (2026-11-24, one torch and one FAISS thread).
ALGORITHMS = [
    Algorithm(
        "exact MoL (exact_search)", "1.0", 847.84, 15824.2 / 32, 1152, "mol-index.md, N = 1e6, run F1b"
    ),
    Algorithm(
        "RAILS CombTopK, IVF stage, K' 256 / K'_avg 8192",
        ".9916",
        50.17,
        1211.3 / 32,
        2468,
        "mol-index.md, N = 1e6, run F1b",
    ),
    # the dot-product scan users compare with: FAISS IndexFlatIP over 64-d embeddings, "about 10 ms per
    # query on one core at N = 1e6" (mol-index.md, "The mean index is exact by default"); p99 not recorded
    Algorithm(
        "dot product, FAISS IndexFlatIP d = 64 (baseline)",
        "1.0 (of a dot product)",
        10.0,
        10.0,
        64 * 4,
        "mol-index.md, the mean index paragraph",
    ),
]

#: Front tier cost (bench_mol_serve_fanout.py, full mode, 2026-12-03, 2-core VM, one thread): server CPU
#: per call at S = 1 and the least-squares slope per added shard, k = 100.
FRONT_BASE_MS = 1.148
FRONT_PER_SHARD_MS = 0.262


def plan(
    algorithm: Algorithm,
    items: float,
    qps: float,
    p99_ms: float,
    *,
    front_share: float,
    utilization: float,
    per_shard_ms: float,
    base_ms: float,
    replicas: int,
) -> dict[str, float]:
    """Shards, cores and memory for one algorithm (see the module docstring for the assumptions)."""
    shard_budget_ms = p99_ms * (1 - front_share)
    items_per_shard = shard_budget_ms / algorithm.p99_ms_per_million * 1e6
    shards = max(1, math.ceil(items / items_per_shard))
    search_cores = qps * algorithm.cpu_ms_per_query_per_million * items / 1e6 / 1000 / utilization
    # Front tiers in a tree of `levels` levels, each front fanning out to `fan` children: a call's front
    # latency is levels x (base + per shard x fan) (each level's fan-out runs on one front process);
    # its front CPU is that of every front involved (1 + fan + ... + fan^(levels - 1) of them).
    budget = p99_ms * front_share
    trees = []  # (levels, fan, latency) for 1..6 levels
    for depth in range(1, 7):
        width = math.ceil(shards ** (1 / depth))
        trees.append((depth, width, depth * (base_ms + per_shard_ms * width)))
    fitting = [tree for tree in trees if tree[2] <= budget]
    levels, fan, latency = fitting[0] if fitting else min(trees, key=lambda tree: tree[2])
    fronts_per_call = sum(fan**level for level in range(levels))
    front_cpu_ms = fronts_per_call * (base_ms + per_shard_ms * fan)
    return {
        "items_per_shard": items_per_shard,
        "shards": shards,
        "search_cores": search_cores,
        "levels": levels,
        "fan": fan,
        "front_ms": latency,
        "front_cores": qps * front_cpu_ms / 1000 / utilization,
        "memory_gb": items * algorithm.bytes_per_item * replicas / 1e9,
        "front_fits_budget": latency <= budget,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=float, nargs="+", default=[1e7, 1e8, 1e9], help="corpus sizes N")
    parser.add_argument("--qps", type=float, default=1000.0, help="queries per second (default 1000)")
    parser.add_argument("--p99-ms", type=float, default=50.0, help="latency target (default 50 ms)")
    parser.add_argument(
        "--front-share", type=float, default=0.2, help="share of the budget kept for the front tier (0.2)"
    )
    parser.add_argument("--utilization", type=float, default=0.5, help="target CPU utilization (0.5)")
    parser.add_argument("--replicas", type=int, default=2, help="copies of each shard (default 2)")
    parser.add_argument(
        "--fanout", type=Path, help="a bench_mol_serve_fanout.py JSON to take the front cost from"
    )
    args = parser.parse_args(argv)
    base_ms, per_shard_ms = FRONT_BASE_MS, FRONT_PER_SHARD_MS
    if args.fanout is not None:
        result = json.loads(args.fanout.read_text())
        rows = [r for r in result["rows"] if r["shards"] == 1]
        base_ms = max(r["server_cpu_ms_per_call"] for r in rows)
        per_shard_ms = max(result["cpu_ms_per_shard"].values())
    print(
        f"QPS {args.qps:g}, p99 {args.p99_ms:g} ms ({args.front_share:.0%} kept for the front tier), CPU "
        f"cores at {args.utilization:.0%} utilization, {args.replicas} replicas; front tier "
        f"{base_ms:.3f} ms + {per_shard_ms:.3f} ms per shard per call\n"
    )
    print(
        "| algorithm (recall@10) | N | items per shard | shards | search cores | front tiers: levels x "
        "fan-out | front latency (ms) | front cores | memory (GB, all replicas) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for algorithm in ALGORITHMS:
        for items in args.items:
            row = plan(
                algorithm,
                items,
                args.qps,
                args.p99_ms,
                front_share=args.front_share,
                utilization=args.utilization,
                per_shard_ms=per_shard_ms,
                base_ms=base_ms,
                replicas=args.replicas,
            )
            flag = "" if row["front_fits_budget"] else " (over its budget)"
            print(
                f"| {algorithm.name} ({algorithm.recall}) | {items:.0e} | {row['items_per_shard']:,.0f} | "
                f"{row['shards']:,} | {row['search_cores']:,.0f} | {row['levels']} x {row['fan']} | "
                f"{row['front_ms']:,.1f}{flag} | {row['front_cores']:,.0f} | {row['memory_gb']:,.0f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
