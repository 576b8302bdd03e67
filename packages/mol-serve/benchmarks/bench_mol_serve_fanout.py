"""The front tier's cost per shard: a real front tier over S = 1..64 stub shard processes on loopback.

    python packages/mol-serve/benchmarks/bench_mol_serve_fanout.py            # S = 1, 2, 4, ..., 64
    python packages/mol-serve/benchmarks/bench_mol_serve_fanout.py --quick    # S = 1, 4 (CI)

Each shard is a stub: a small grpc.aio process (no torch) that answers every Retrieve at once with
``top_k`` fixed ids and descending scores, so what is measured is the front tier alone: validating the
call, building S shard requests, the fan-out, and merging S top-k lists. The front tier is a real
``mol-serve serve --shard ...`` process over a real shard set of S shards (a dot product, d = 16,
200 x S items; only its manifests are read). A closed-loop client sends B = 1 embeddings queries with
k = 10 (and k = 100). Reported per S: p50 / p99 latency of a call, and the front tier's CPU time per
call (user + system time of its process, from /proc, over the calls), the figure that does not depend on
what else runs on the machine. As a baseline, the same client calls one stub directly (no front tier).

The quick mode checks that every call's ids are the merged top-k of the stubs' answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NUM_CALLS_FULL = 300
NUM_CALLS_QUICK = 60
DIM = 16


# --------------------------------------------------------------------------------------------- the stub
def stub_ids(shard: int, k: int) -> list[int]:
    """The ids stub ``shard`` answers with (distinct across shards)."""
    return [shard * 100_000 + rank for rank in range(k)]


def stub_scores(shard: int, k: int) -> list[float]:
    """Its scores: descending, interleaving the shards (shard s's rank r scores 1 - r / 100 - s / 1e4)."""
    return [1.0 - rank / 100 - shard / 10_000 for rank in range(k)]


def run_stub(shard: int, port_file: Path) -> None:
    """Serves RetrievalService.Retrieve with fixed answers until killed."""
    import grpc
    from grpc import aio

    from mol_core.proto.mol.v1 import retrieval_pb2, retrieval_pb2_grpc

    class Stub(retrieval_pb2_grpc.RetrievalServiceServicer):  # type: ignore[misc]
        async def Retrieve(self, request: Any, context: Any) -> Any:
            response = retrieval_pb2.RetrieveResponse(index_version=request.index_version)
            k = request.top_k
            for _ in request.queries:
                response.results.add(ids=stub_ids(shard, k), scores=stub_scores(shard, k))
            return response

    async def serve() -> None:
        server = aio.server()
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(Stub(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_file.write_text(json.dumps({"port": port}))
        await server.wait_for_termination()

    del grpc
    asyncio.run(serve())


# ------------------------------------------------------------------------------------------- processes
def _start(args: list[str], port_file: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not port_file.exists() or not port_file.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{args[:4]} did not start")
        time.sleep(0.05)
    time.sleep(0.05)
    return process, int(json.loads(port_file.read_text())["port"])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _shard_set(root: Path, num_shards: int) -> Path:
    import torch

    from mol_core.similarity import DotProductSimilarity
    from mol_index import MolIndex, ShardedIndex

    torch.manual_seed(0)
    num_items = 200 * num_shards
    index = MolIndex.build(DotProductSimilarity(DIM), torch.arange(num_items), torch.randn(num_items, DIM))
    return ShardedIndex.from_index(index, num_shards).save(root / f"set-{num_shards}")


def _calls(target: str, k: int, calls: int) -> tuple[list[float], list[list[int]]]:
    """``calls`` closed-loop Retrieve calls; their wall latencies (s) and the ids of the last one."""
    import numpy as np

    from mol_serve.client import RetrievalClient

    query = np.random.default_rng(0).standard_normal((1, 1, DIM)).astype(np.float32)
    latencies: list[float] = []
    with RetrievalClient(target, timeout=30) as client:
        for _ in range(5):  # connect and warm up
            client.retrieve(embeddings=query, top_k=k, index_alias="main")
        for _ in range(calls):
            start = time.perf_counter()
            result = client.retrieve(embeddings=query, top_k=k, index_alias="main")
            latencies.append(time.perf_counter() - start)
    return latencies, result.ids


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _merged_ids(num_shards: int, k: int) -> list[int]:
    """The top ``k`` of every stub's answer, by score (the reference the front tier must return)."""
    pairs = [
        (score, item)
        for shard in range(num_shards)
        for item, score in zip(stub_ids(shard, k), stub_scores(shard, k), strict=True)
    ]
    pairs.sort(key=lambda pair: -pair[0])
    return [item for _, item in pairs[:k]]


def measure(num_shards: int, ks: list[int], calls: int, root: Path) -> list[dict[str, Any]]:
    """Rows for one S: a front tier over S stubs (``num_shards`` = 0: the client calls one stub directly)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    processes: list[subprocess.Popen[bytes]] = []
    rows = []
    try:
        ports = []
        for shard in range(max(num_shards, 1)):
            port_file = root / f"stub-{num_shards}-{shard}.json"
            command = [sys.executable, __file__, "--stub", str(shard), "--port-file", str(port_file)]
            process, port = _start(command, port_file, env)
            processes.append(process)
            ports.append(port)
        if num_shards == 0:
            server, target = processes[0], f"127.0.0.1:{ports[0]}"
        else:
            shard_set = _shard_set(root, num_shards)
            port_file = root / f"front-{num_shards}.json"
            command = [sys.executable, "-m", "mol_serve", "--log-level", "WARNING", "serve", "--port", "0"]
            command += ["--port-file", str(port_file), "--torch-threads", "1", "--index", f"main={shard_set}"]
            command += [f"--shard=127.0.0.1:{port}" for port in ports]
            server, front_port = _start(command, port_file, env)
            processes.append(server)
            target = f"127.0.0.1:{front_port}"
        for k in ks:
            before = _cpu_seconds(server.pid)
            latencies, ids = _calls(target, k, calls)
            cpu = (_cpu_seconds(server.pid) - before) / (calls + 5)
            if num_shards and ids != [_merged_ids(num_shards, k)]:
                raise AssertionError(f"S = {num_shards}, k = {k}: front tier ids are not the merged top-k")
            rows.append(
                {
                    "shards": num_shards,
                    "k": k,
                    "calls": calls,
                    "p50_ms": 1e3 * statistics.median(latencies),
                    "p99_ms": 1e3 * _p(latencies, 0.99),
                    "server_cpu_ms_per_call": 1e3 * cpu,
                }
            )
            what = "direct to one stub" if num_shards == 0 else f"front tier over S = {num_shards}"
            row = rows[-1]
            print(
                f"{what:>26}, k = {k:>3}: p50 {row['p50_ms']:6.2f} ms, p99 {row['p99_ms']:6.2f} ms, "
                f"server CPU {row['server_cpu_ms_per_call']:.3f} ms per call",
                flush=True,
            )
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait(timeout=30)
    return rows


def _slope(rows: list[dict[str, Any]], k: int) -> float:
    """Least-squares slope of the front tier's CPU ms per call against S (ms per shard), at ``k``."""
    points = [(r["shards"], r["server_cpu_ms_per_call"]) for r in rows if r["k"] == k and r["shards"] > 0]
    if len(points) < 2:
        return float("nan")
    mean_s = sum(s for s, _ in points) / len(points)
    mean_c = sum(c for _, c in points) / len(points)
    num = sum((s - mean_s) * (c - mean_c) for s, c in points)
    den = sum((s - mean_s) ** 2 for s, _ in points)
    return num / den


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="S in {1, 4}, k = 10, 60 calls (CI)")
    parser.add_argument("--shards", type=int, nargs="+", help="the S values (default 1 2 4 8 16 32 64)")
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path (atomically)")
    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stub is not None:
        run_stub(args.stub, args.port_file)
        return 0
    shards = args.shards or ([1, 4] if args.quick else [1, 2, 4, 8, 16, 32, 64])
    ks = [10] if args.quick else [10, 100]
    calls = NUM_CALLS_QUICK if args.quick else NUM_CALLS_FULL
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for num_shards in [0, *shards]:
            rows.extend(measure(num_shards, ks, calls, Path(tmp)))
    slopes = {k: _slope(rows, k) for k in ks}
    for k, slope in slopes.items():
        print(f"front tier CPU per added shard, k = {k}: {slope:.3f} ms per call")
    if args.output is not None:
        from mol_core.atomic import write_text_atomically

        result = {
            "benchmark": "mol_serve_fanout",
            "mode": "quick" if args.quick else "full",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(),
            "torch_threads": 1,
            "rows": rows,
            "cpu_ms_per_shard": {str(k): v for k, v in slopes.items()},
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.output, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
