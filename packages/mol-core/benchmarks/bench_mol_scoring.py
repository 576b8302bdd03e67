"""MoL corpus-scoring throughput: mol-core's blockwise path against a naive reference.

The naive reference materialises every component logit of every (query, item) pair at once, ``(B, N, P)``,
and runs the gating over that whole tensor, the way a first implementation of the paper's formula does.
mol-core's :meth:`~mol_core.similarity.Similarity.score_corpus` scores the corpus in cache-sized blocks.
Both run in the same process on the same model and the same inputs: the item side precomputed once (as in
a model bundle) and the query side computed inside each timed call, for both. Calls alternate between the
two (interleaved), their scores are compared, and the ratio of their throughputs (query-item pairs per
second) is reported from the median and from the minimum times, with the torch thread count
(``--threads``, default 1). A float32 GEMM of ``GEMM_SIZE`` cubed runs in the same rounds: each scorer's
*fraction of the GEMM rate* is its pairs per second times the multiply-adds one pair needs in the three
matrix products of MoL (component logits ``2 P d``, the pair-wise gating MLP ``2 P H + 2 H P`` FLOPs)
over that GEMM's FLOPs per second, both from the minimum times (issue #15's target for exact scoring).

    python packages/mol-core/benchmarks/bench_mol_scoring.py --quick --output bench-results/mol_scoring.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mol_core.similarity import DEFAULT_BLOCK_PAIRS, ItemSide, MoLSimilarity, QuerySide

INPUT_DIM = 50  # the paper's ML-1M item embedding / encoder width
GEMM_SIZE = 1024  # the reference GEMM: (GEMM_SIZE, GEMM_SIZE) @ (GEMM_SIZE, GEMM_SIZE), float32


def mol_flops_per_pair(sim: MoLSimilarity) -> int:
    """FLOPs of the matrix products one (query, item) pair needs: ``2 P d + 4 P H``."""
    components = sim.num_components
    hidden = sim.gating.logits_mlp.hidden.out_features
    return 2 * components * sim.component_dim + 4 * components * hidden


def naive_score_corpus(sim: MoLSimilarity, query: QuerySide, corpus: ItemSide) -> torch.Tensor:
    """Every component logit at once: holds (B, N, P) logits and (B, N, hidden) gating activations."""
    f, g = query.embeddings, corpus.embeddings  # (B, Pq, d), (N, Px, d)
    logits = torch.einsum("bqd,npd->bnqp", f, g).flatten(2) / sim.temperature  # (B, N, P)
    if query.gating is None or corpus.gating is None:
        raise RuntimeError("MoLSimilarity always builds gating features")
    weights = sim.gating(logits, query.gating.unsqueeze(1), corpus.gating.unsqueeze(0))  # (B, N, P)
    return (weights * logits).sum(-1)  # (B, N)


def time_interleaved(
    contenders: dict[str, Callable[[], torch.Tensor]], repeats: int
) -> dict[str, tuple[float, float, torch.Tensor]]:
    """``name -> (median, min wall time, last result)`` over ``repeats`` rounds that call every contender
    once each, in turn, after one warm-up call of each."""
    results = {name: fn() for name, fn in contenders.items()}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t), results[name]) for name, t in times.items()}


def time_call(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    median, _, result = time_interleaved({"only": fn}, repeats)["only"]
    return median, result


def run(quick: bool) -> dict[str, object]:
    torch.manual_seed(0)
    num_items = 20_000 if quick else 100_000
    repeats = 3 if quick else 5
    sim = MoLSimilarity(query_input_dim=INPUT_DIM, item_input_dim=INPUT_DIM).eval()  # 8 x 4 x 64
    item_repr = torch.randn(num_items, INPUT_DIM)
    rows: list[dict[str, object]] = []
    flops_per_pair = mol_flops_per_pair(sim)
    gemm_a, gemm_b = torch.randn(GEMM_SIZE, GEMM_SIZE), torch.randn(GEMM_SIZE, GEMM_SIZE)
    with torch.inference_mode():
        corpus = sim.item_side(item_repr)  # precomputed offline, as in a bundle
        for batch in (1, 32):
            query_repr = torch.randn(batch, INPUT_DIM)
            pairs = batch * num_items
            timed = time_interleaved(
                {
                    "naive": lambda q=query_repr: naive_score_corpus(sim, sim.query_side(q), corpus),
                    "blockwise": lambda q=query_repr: sim.score_corpus(sim.query_side(q), corpus),
                    "gemm": lambda: gemm_a @ gemm_b,
                },
                repeats,
            )
            (t_naive, min_naive, naive), (t_block, min_block, blockwise) = timed["naive"], timed["blockwise"]
            gemm_flops_per_s = 2 * GEMM_SIZE**3 / timed["gemm"][1]
            rows.append(
                {
                    "batch": batch,
                    "items": num_items,
                    "naive_pairs_per_s": pairs / t_naive,
                    "blockwise_pairs_per_s": pairs / t_block,
                    "speedup": t_naive / t_block,
                    "speedup_of_minimums": min_naive / min_block,
                    "max_abs_diff": float((naive - blockwise).abs().max()),
                    "gemm_gflops": gemm_flops_per_s / 1e9,
                    "naive_gemm_fraction": pairs / min_naive * flops_per_pair / gemm_flops_per_s,
                    "blockwise_gemm_fraction": pairs / min_block * flops_per_pair / gemm_flops_per_s,
                }
            )
        sweep = []
        query = sim.query_side(torch.randn(32, INPUT_DIM))
        for pairs_per_block in (1024, 2048, 4096, 8192, 16384, 32768):
            block = max(16, pairs_per_block // 32)
            t, _ = time_call(lambda b=block: sim.score_corpus(query, corpus, block_size=b), repeats)
            sweep.append({"pairs_per_block": pairs_per_block, "pairs_per_s": 32 * num_items / t})
    return {
        "benchmark": "mol_scoring",
        "mode": "quick" if quick else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "config": {
            "Pq": 8,
            "Px": 4,
            "d": 64,
            "gating_hidden": 128,
            "default_block_pairs": DEFAULT_BLOCK_PAIRS,
            "flops_per_pair": flops_per_pair,
            "gemm": f"float32 ({GEMM_SIZE}, {GEMM_SIZE}) @ ({GEMM_SIZE}, {GEMM_SIZE})",
        },
        "results": rows,
        "block_sweep_b32": sweep,
    }


def print_table(result: dict[str, object]) -> None:
    print(f"MoL corpus scoring ({result['mode']}), {result['machine']}")  # type: ignore[index]
    print(
        f"{'B':>4} {'N':>8} {'naive Mpairs/s':>15} {'blockwise Mpairs/s':>19} {'speedup':>8} "
        f"{'of mins':>8} {'max|diff|':>10} {'GEMM GF/s':>10} {'naive/GEMM':>11} {'block/GEMM':>11}"
    )
    for row in result["results"]:  # type: ignore[attr-defined]
        print(
            f"{row['batch']:>4} {row['items']:>8} {row['naive_pairs_per_s'] / 1e6:>15.2f} "
            f"{row['blockwise_pairs_per_s'] / 1e6:>19.2f} {row['speedup']:>7.2f}x "
            f"{row['speedup_of_minimums']:>7.2f}x {row['max_abs_diff']:>10.2e} {row['gemm_gflops']:>10.1f} "
            f"{row['naive_gemm_fraction']:>10.1%} {row['blockwise_gemm_fraction']:>10.1%}"
        )
    print(
        "block sweep, B = 32: "
        + ", ".join(
            f"{s['pairs_per_block']}: {s['pairs_per_s'] / 1e6:.2f}M/s"
            for s in result["block_sweep_b32"]  # type: ignore[attr-defined]
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small corpus (20k items) and 3 repeats, for CI")
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument(
        "--min-speedup",
        type=float,
        default=1.0,
        help="exit 1 if blockwise scoring is not at least this many times faster than naive at B = 32",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.quick)
    print_table(result)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.output)
    rows = result["results"]
    bad = [r for r in rows if r["max_abs_diff"] > 1e-3]  # type: ignore[index,operator]
    if bad:
        print(f"FAIL: blockwise and naive scores differ: {bad}", file=sys.stderr)
        return 1
    speedup_b32 = next(r["speedup"] for r in rows if r["batch"] == 32)  # type: ignore[index]
    if speedup_b32 < args.min_speedup:  # type: ignore[operator]
        print(
            f"FAIL: speedup {speedup_b32:.2f}x at B = 32 is below --min-speedup {args.min_speedup}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
