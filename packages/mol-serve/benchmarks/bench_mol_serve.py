"""mol-serve under closed-loop load: QPS and p50/p99 latency, and the serving overhead.

A synthetic MoL index (random weights, N items) is saved as an artifact and served by a real
``mol-serve serve`` subprocess on 127.0.0.1. C concurrent asyncio clients each send a request, wait for
its answer and send the next (closed loop), for a bounded time and count, with B = 1 query per request
and with batched requests (B > 1). Two algorithms are measured: ``exact`` (recall 1.0) and
RAILS ``comb_topk`` with K' = 64 (recall@k against exact measured in-process and reported). The
built-in check compares the server's ids with in-process ``MolIndex.search`` for the same 32 queries
(exit code 1 on any mismatch or failed call).

The serving overhead is the p50 end-to-end gRPC latency of one query (C = 1, B = 1) divided by the p50
in-process ``MolIndex.search`` latency of the same query on the same index, measured as interleaved
pairs (one in-process search, then the same query over gRPC, repeated) so that load from other processes
on a shared machine affects both sides alike.

    python packages/mol-serve/benchmarks/bench_mol_serve.py --quick --output bench-results/mol_serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mol_core.similarity import MoLSimilarity
from mol_index import MolIndex, SearchParams
from mol_serve.client import AsyncRetrievalClient, build_request

PQ, PX, DIM, INPUT_DIM = 4, 4, 32, 32


def build_index(root: Path, num_items: int) -> tuple[MolIndex, Path, MoLSimilarity]:
    torch.manual_seed(0)
    sim = MoLSimilarity(
        query_input_dim=INPUT_DIM,
        item_input_dim=INPUT_DIM,
        query_components=PQ,
        item_components=PX,
        component_dim=DIM,
    ).eval()
    index = MolIndex.build(
        sim, torch.arange(num_items, dtype=torch.int64) + 1000, torch.randn(num_items, INPUT_DIM)
    )
    return index, index.save(root / "index"), sim


def start_server(root: Path, index_dir: Path, max_batch: int) -> tuple[subprocess.Popen[bytes], int]:
    port_file = root / "port.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "mol_serve", "--log-level", "WARNING", "serve", "--host", "127.0.0.1"]
    command += ["--port", "0", "--index", f"bench={index_dir}", "--port-file", str(port_file)]
    command += ["--max-batch", str(max_batch), "--max-wait-ms", "2", "--max-concurrent", "1024"]
    process = subprocess.Popen([*command, "--torch-threads", "1"], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if port_file.exists():
            return process, int(json.loads(port_file.read_text())["port"])
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start within 120 s")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


async def closed_loop(
    target: str, requests: list[object], concurrency: int, seconds: float, max_requests: int
) -> dict[str, float]:
    """C clients in a closed loop for ``seconds`` (and at most ``max_requests`` calls in all)."""
    latencies: list[float] = []
    failures = 0
    async with AsyncRetrievalClient(target, timeout=120) as client:  # deep queues at high C x B
        await client.retrieve_raw(requests[0])  # type: ignore[arg-type]  # warm-up
        stop = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal failures
            n = offset
            while time.perf_counter() < stop and len(latencies) + failures < max_requests:
                start = time.perf_counter()
                try:
                    await client.retrieve_raw(requests[n % len(requests)])  # type: ignore[arg-type]
                    latencies.append(time.perf_counter() - start)
                except Exception:  # counted as a failure
                    failures += 1
                n += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {
        "requests": len(latencies),
        "failures": failures,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


async def paired_latency(
    target: str,
    index: MolIndex,
    query: torch.Tensor,
    gating: torch.Tensor,
    k: int,
    algorithm: str,
    params: dict[str, int],
    repeats: int,
) -> tuple[float, float, float, float]:
    """Median seconds of in-process ``MolIndex.search`` and of the same B = 1 query over gRPC, interleaved,
    and the server's own median ``search_us`` and ``total_us`` (in seconds) for those calls."""
    search_params = SearchParams(algorithm=algorithm, **params)  # type: ignore[arg-type]
    local, remote, server_search, server_total = [], [], [], []
    async with AsyncRetrievalClient(target, timeout=60) as client:
        for i in range(repeats + 1):
            j = i % query.shape[0]
            q, g = query[j : j + 1].clone(), gating[j : j + 1].clone()  # (1, Pq, d), (1, P)
            request = build_request(
                top_k=k, embeddings=q.numpy(), gating=g.numpy(), algorithm=algorithm, params=params
            )
            start = time.perf_counter()
            index.search(q, k, gating=g, params=search_params)
            middle = time.perf_counter()
            response = await client.retrieve_raw(request)
            end = time.perf_counter()
            if i:  # the first pair warms up both sides
                local.append(middle - start)
                remote.append(end - middle)
                server_search.append(response.timings.search_us / 1e6)
                server_total.append(response.timings.total_us / 1e6)
    return tuple(statistics.median(x) for x in (local, remote, server_search, server_total))  # type: ignore[return-value]


ALGORITHMS: list[tuple[str, dict[str, int]]] = [("exact", {}), ("comb_topk", {"k_prime": 64})]


def run(quick: bool) -> dict[str, object]:
    torch.set_num_threads(1)
    num_items = 20_000 if quick else 100_000
    seconds = 3.0 if quick else 10.0
    k, max_batch, num_queries = 10, 16, 256
    concurrencies = [1, 4, 16] if quick else [1, 2, 4, 8, 16, 32]
    batch_sizes = [1, 16]
    rows: list[dict[str, object]] = []
    summary: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-mol-serve-") as tmp:
        root = Path(tmp)
        index, index_dir, sim = build_index(root, num_items)
        gen = torch.Generator().manual_seed(1)
        with torch.inference_mode():
            side = sim.query_side(torch.randn(num_queries, INPUT_DIM, generator=gen))
        emb, gating = side.embeddings.contiguous(), side.gating
        assert gating is not None
        _, exact_ids = index.search(emb, k, gating=gating, params=SearchParams(algorithm="exact"))
        process, port = start_server(root, index_dir, max_batch=max_batch)
        target = f"127.0.0.1:{port}"
        try:
            for algorithm, params in ALGORITHMS:
                search_params = SearchParams(algorithm=algorithm, **params)
                _, ids = index.search(emb, k, gating=gating, params=search_params)
                recall = sum(
                    len(set(a) & set(b)) for a, b in zip(ids.tolist(), exact_ids.tolist(), strict=True)
                ) / (num_queries * k)
                local_s, remote_s, server_search_s, server_total_s = asyncio.run(
                    paired_latency(target, index, emb, gating, k, algorithm, params, 60 if quick else 200)
                )
                check = build_request(
                    top_k=k, embeddings=emb[:32].numpy(), gating=gating[:32].numpy(), algorithm=algorithm,
                    params=params,
                )  # fmt: skip

                async def fetch(request: object = check) -> list[list[int]]:
                    async with AsyncRetrievalClient(target, timeout=60) as c:
                        response = await c.retrieve_raw(request)  # type: ignore[arg-type]
                        return [list(r.ids) for r in response.results]

                served = asyncio.run(fetch())
                mismatches = sum(a != b for a, b in zip(served, ids[:32].tolist(), strict=True))
                for b in batch_sizes:
                    requests = [
                        build_request(
                            top_k=k, embeddings=emb[i : i + b].numpy(), gating=gating[i : i + b].numpy(),
                            algorithm=algorithm, params=params,
                        )
                        for i in range(0, num_queries - b + 1, b)
                    ]  # fmt: skip
                    for c in concurrencies:
                        stats = asyncio.run(closed_loop(target, requests, c, seconds, 200_000))  # type: ignore[arg-type]
                        rows.append(
                            {"algorithm": algorithm, "B": b, "C": c, **stats, "qps": stats["rps"] * b}
                        )
                summary.append({
                    "algorithm": algorithm, "params": params, "recall_at_k": recall,
                    "in_process_search_p50_ms": local_s * 1e3, "grpc_b1_p50_ms": remote_s * 1e3,
                    "server_search_p50_ms": server_search_s * 1e3,
                    "server_total_p50_ms": server_total_s * 1e3,
                    "serving_overhead_b1": remote_s / local_s, "check_mismatched_queries": mismatches,
                })  # fmt: skip
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return {
        "benchmark": "mol_serve",
        "mode": "quick" if quick else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "gpu": "not measured (CPU run)"},
        "config": {"N": num_items, "Pq": PQ, "Px": PX, "d": DIM, "k": k,
                   "server": f"1 torch thread, max_batch {max_batch}, max_wait 2 ms (adaptive)",
                   "seconds_per_point": seconds, "client": "asyncio, same machine"},
        "algorithms": summary,
        "rows": rows,
    }  # fmt: skip


def print_table(result: dict[str, object]) -> None:
    print(f"mol-serve closed-loop load ({result['mode']}), {result['config']}")
    for alg in result["algorithms"]:  # type: ignore[attr-defined]
        print(f"{alg['algorithm']} {alg['params']}: recall@k {alg['recall_at_k']:.3f}, in-process search p50 "
              f"(B=1) {alg['in_process_search_p50_ms']:.3f} ms, gRPC p50 {alg['grpc_b1_p50_ms']:.3f} ms "
              f"(server: search {alg['server_search_p50_ms']:.3f} ms, "
              f"total {alg['server_total_p50_ms']:.3f} ms), "
              f"serving overhead {alg['serving_overhead_b1']:.2f}x, "
              f"mismatches {alg['check_mismatched_queries']}")  # fmt: skip
    print(f"{'algorithm':>10} {'B':>4} {'C':>4} {'QPS':>10} {'p50 ms':>9} {'p99 ms':>9} {'fails':>6}")
    for row in result["rows"]:  # type: ignore[attr-defined]
        print(f"{row['algorithm']:>10} {row['B']:>4} {row['C']:>4} {row['qps']:>10.1f} {row['p50_ms']:>9.3f} "
              f"{row['p99_ms']:>9.3f} {row['failures']:>6}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20k items, C in {1, 4, 16}, 3 s per point (CI)")
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path (atomically)")
    args = parser.parse_args(argv)
    result = run(args.quick)
    print_table(result)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, args.output)
    failed = any(a["check_mismatched_queries"] for a in result["algorithms"]) or any(  # type: ignore[attr-defined]
        r["failures"]
        for r in result["rows"]  # type: ignore[attr-defined]
    )
    if failed:
        print("FAILED: the server disagreed with in-process search or calls failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
