"""A seeded fuzz run against a real mol-serve process: malformed requests and raw bytes.

    python packages/mol-serve/benchmarks/bench_mol_serve_fuzz.py --quick   # CI: 1,500 cases
    python packages/mol-serve/benchmarks/bench_mol_serve_fuzz.py --cases 30000 --output R.json

A synthetic MoL index (random weights) is served by ``mol-serve serve`` on 127.0.0.1 with a token. The
corpus (:func:`fuzz_cases`, numpy's generator with ``--seed``) mixes structured requests with hostile
fields (extreme, non-finite or zero embeddings and gating, wrong shapes and dtypes, junk aliases,
algorithms and parameters, huge ``top_k`` and exclusion lists) and raw bytes (random, and valid requests
truncated or with flipped bits), sent with and without the token. Checked for every answer:

- the status is OK, INVALID_ARGUMENT or (without the token) UNAUTHENTICATED: never UNKNOWN, INTERNAL or
  anything else;
- an OK answer has one result per query, finite scores in descending order, at most ``top_k`` of them,
  and for exact search exactly ``min(top_k, N - excluded)``;
- the process is alive at the end, and its resident memory grew by at most ``--rss-limit-mb`` between the
  end of a warm-up (the first tenth of the cases) and the end.

The run fails (exit code 1) on any violation; the JSON lists counts per status and case kind.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from mol_core.atomic import write_text_atomically
from mol_core.proto.mol.v1 import retrieval_pb2
from mol_core.similarity import MoLSimilarity
from mol_index import MolIndex

TOKEN = "fuzz-token"
ALGORITHMS = ("exact", "comb_topk", "topk_avg", "topk_per_embd")
METHOD = "/mol.v1.RetrievalService/Retrieve"
ALLOWED = {"OK", "INVALID_ARGUMENT"}
FINITE = np.array([0.0, 1.0, -1.0, 1e38, -1e38, 3.4e38, 1e-38, 1e-45, 1e4, -1e4, 1e5])
NON_FINITE = np.array([np.nan, np.inf, -np.inf])


@dataclass(frozen=True)
class Case:
    """One fuzz input: a request or raw bytes, sent with or without the token."""

    kind: str  # "request" or "raw"
    payload: bytes
    with_token: bool
    request: retrieval_pb2.RetrieveRequest | None


def _embeddings(
    rng: np.random.Generator, shape: tuple[int, ...], hostile: float = 1.0
) -> retrieval_pb2.Embeddings:
    """Mostly the right shape and dtype, with hostile values; sometimes wrong shape, dtype or bytes
    (``hostile``: the probability of any of that; otherwise plain random values)."""
    mode = rng.integers(0, 20) if rng.random() < hostile else 19
    values = rng.standard_normal(shape).astype(np.float32) * float(rng.choice([1e-3, 1.0, 30.0]))
    if mode <= 3:  # special values sprinkled in
        flat = values.reshape(-1)
        picks = rng.integers(0, flat.size, size=max(1, flat.size // int(rng.integers(1, 8))))
        flat[picks] = rng.choice(FINITE, size=picks.size)
    elif mode == 4:
        values[...] = float(rng.choice(FINITE))
    elif mode == 5 and values.ndim == 2:
        values[int(rng.integers(0, values.shape[0]))] = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        data = values.astype("<f4").tobytes()
    dims = list(shape)
    dtype = retrieval_pb2.DTYPE_FLOAT32
    if mode == 9:
        values.reshape(-1)[int(rng.integers(0, values.size))] = float(rng.choice(NON_FINITE))
        data = values.astype("<f4").tobytes()
    elif mode == 6:
        dims = [int(x) for x in rng.integers(0, 70, size=int(rng.integers(0, 4)))]
    elif mode == 7:
        dtype = int(rng.integers(0, 6))
        if dtype in (retrieval_pb2.DTYPE_BFLOAT16, retrieval_pb2.DTYPE_FLOAT16):
            data = rng.integers(0, 256, size=len(data) // 2, dtype=np.uint8).tobytes()
    elif mode == 8:
        data = data[: int(rng.integers(0, len(data) + 1))]
    return retrieval_pb2.Embeddings(data=data, dtype=dtype, shape=dims)


def _junk_text(rng: np.random.Generator) -> str:
    choice = rng.integers(0, 5)
    if choice == 0:
        return ""
    if choice == 1:
        return "x" * int(rng.integers(1, 20_000))
    if choice == 2:
        return bytes(rng.integers(32, 127, size=int(rng.integers(1, 40)), dtype=np.uint8)).decode()
    if choice == 3:
        return "\u00e9\u4e2d\U0001f600" * int(rng.integers(1, 50))
    return str(rng.choice(["prod", "exact", "k_prime", "64", "-1", "true"]))


def _request(rng: np.random.Generator, shapes: tuple[tuple[int, int], int], num_items: int) -> Any:
    (num_q, dim), num_p = shapes
    bad_k = [0, num_items + 1, 2**32 - 1]
    good_k = [1, 5, 10, num_items, int(rng.integers(1, 100))]
    request = retrieval_pb2.RetrieveRequest(
        top_k=int(rng.choice(bad_k) if rng.random() < 0.1 else rng.choice(good_k))
    )
    for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.1 else int(rng.integers(1, 4))):
        query = request.queries.add()
        kind = rng.integers(0, 10)
        if kind <= 7:
            query.embeddings.CopyFrom(_embeddings(rng, (num_q, dim), hostile=0.6))
            if rng.random() < 0.97:
                query.gating.CopyFrom(_embeddings(rng, (num_p,), hostile=0.2))
        elif kind == 8:
            query.history.item_ids.extend(int(x) for x in rng.integers(-(2**40), 2**40, size=3))
        if rng.random() < 0.3:
            query.exclude_ids.extend(
                int(x) for x in rng.integers(0, num_items + 1000, size=int(rng.integers(1, 50)))
            )
    if rng.random() < 0.3:
        request.exclude_ids.extend(
            int(x) for x in rng.integers(-5, num_items + 5, size=int(rng.integers(1, 300)))
        )
    if rng.random() < 0.5:
        request.algorithm = str(rng.choice(ALGORITHMS)) if rng.random() < 0.9 else _junk_text(rng)
    if rng.random() < 0.2:
        key = (
            str(rng.choice(["k_prime", "k_prime_avg", "nprobe", "rerank", "zzz"]))
            if rng.random() < 0.8
            else _junk_text(rng)
        )
        request.algorithm_params[key] = _junk_text(rng) if rng.random() < 0.5 else str(rng.integers(-5, 2000))
    if rng.random() < 0.1:
        request.index_alias = _junk_text(rng)
    request.exclude_history = bool(rng.random() < 0.05)
    return request


def fuzz_cases(seed: int, count: int, shapes: tuple[tuple[int, int], int], num_items: int) -> Iterator[Case]:
    """``count`` cases from a seeded generator: ``shapes`` is ``((Pq, d), P)`` of the served index."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        with_token = bool(rng.random() < 0.85)
        if rng.random() < 0.7:
            request = _request(rng, shapes, num_items)
            yield Case("request", request.SerializeToString(), with_token, request)
            continue
        if rng.random() < 0.5:
            payload = rng.integers(0, 256, size=int(rng.integers(0, 512)), dtype=np.uint8).tobytes()
        else:  # a valid request, damaged
            payload = bytearray(_request(rng, shapes, num_items).SerializeToString())
            if payload and rng.random() < 0.5:
                del payload[int(rng.integers(0, len(payload))) :]
            for _ in range(int(rng.integers(1, 6))):
                if payload:
                    payload[int(rng.integers(0, len(payload)))] ^= 1 << int(rng.integers(0, 8))
            payload = bytes(payload)
        yield Case("raw", bytes(payload), with_token, None)


def check_answer(case: Case, code: str, response: bytes | None, index_ids: frozenset[int]) -> str | None:
    """``None`` when the answer is acceptable, else what is wrong."""
    allowed = ALLOWED | ({"UNAUTHENTICATED"} if not case.with_token else set())
    if code not in allowed:
        return f"status {code}"
    if code != "OK" or response is None:
        return None
    if not case.with_token:
        return "OK without the token"
    answer = retrieval_pb2.RetrieveResponse.FromString(response)
    request = case.request or retrieval_pb2.RetrieveRequest.FromString(case.payload)
    if len(answer.results) != len(request.queries):
        return f"{len(answer.results)} results for {len(request.queries)} queries"
    exact = (request.algorithm or "exact") == "exact"
    for query, result in zip(request.queries, answer.results, strict=True):
        scores = list(result.scores)
        if len(result.ids) != len(scores) or len(scores) > request.top_k:
            return "result sizes do not match"
        if not all(np.isfinite(scores)):
            return "OK with a non-finite score"
        if any(a < b for a, b in itertools.pairwise(scores)):
            return "scores not in descending order"
        excluded = {x for x in (*request.exclude_ids, *query.exclude_ids) if x in index_ids}
        expected = min(request.top_k, len(index_ids) - len(excluded))
        if exact and len(scores) != expected:
            return f"{len(scores)} exact results, expected {expected}"
    return None


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def fuzz(
    target: str,
    pid: int,
    cases: list[Case],
    index_ids: frozenset[int],
    *,
    token: str = TOKEN,
    rss_limit_mb: float = 64.0,
) -> dict[str, Any]:
    """Sends every case to ``target`` (one channel, raw bytes both ways) with ``token`` where the case
    has it, and checks each answer; ``index_ids`` are the served index's ids."""
    counts: Counter[str] = Counter()
    violations: list[dict[str, Any]] = []
    warmup = max(1, len(cases) // 10)
    rss_start = rss_mb(pid)
    rss_warm = rss_start
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)
        for i, case in enumerate(cases):
            metadata = [("authorization", f"Bearer {token}")] if case.with_token else []
            response, code = None, "OK"
            try:
                response = call(case.payload, metadata=metadata, timeout=30)
            except grpc.RpcError as err:
                code = err.code().name
            counts[f"{case.kind} {code}"] += 1
            problem = check_answer(case, code, response, index_ids)
            if problem is not None:
                violations.append({"case": i, "kind": case.kind, "problem": problem})
            if i + 1 == warmup:
                rss_warm = rss_mb(pid)
    rss_end = rss_mb(pid)
    if rss_end - rss_warm > rss_limit_mb:
        violations.append({"problem": f"RSS grew {rss_end - rss_warm:.1f} MB after warm-up"})
    return {
        "counts": dict(sorted(counts.items())),
        "violations": violations[:50],
        "violation_count": len(violations),
        "rss_mb": {"start": rss_start, "after_warmup": rss_warm, "end": rss_end},
    }


def _serve(root: Path, num_items: int) -> tuple[subprocess.Popen[bytes], int, tuple[tuple[int, int], int]]:
    torch.manual_seed(0)
    sim = MoLSimilarity(
        query_input_dim=16, item_input_dim=16, query_components=4, item_components=2, component_dim=16
    ).eval()
    ids = torch.arange(num_items, dtype=torch.int64) + 1000
    index_dir = MolIndex.build(sim, ids, torch.randn(num_items, 16)).save(root / "index")
    (root / "token").write_text(TOKEN)
    port_file = root / "port.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mol_serve",
            "--log-level",
            "WARNING",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--index",
            f"prod={index_dir}",
            "--token-file",
            str(root / "token"),
            "--torch-threads",
            "1",
        ],
        env=env,
    )
    deadline = time.monotonic() + 120
    while not port_file.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.1)
    port = int(json.loads(port_file.read_text())["port"])
    return process, port, ((sim.num_query_components, sim.component_dim), sim.num_components)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1,500 cases (CI)")
    parser.add_argument("--cases", type=int, default=30_000, help="cases in full mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--items", type=int, default=2000, help="items in the served index")
    parser.add_argument("--rss-limit-mb", type=float, default=64.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path")
    args = parser.parse_args(argv)
    count = 1500 if args.quick else args.cases
    with tempfile.TemporaryDirectory() as tmp:
        process, port, shapes = _serve(Path(tmp), args.items)
        try:
            cases = list(fuzz_cases(args.seed, count, shapes, args.items))
            start = time.perf_counter()
            ids = frozenset(range(1000, 1000 + args.items))
            measured = fuzz(f"127.0.0.1:{port}", process.pid, cases, ids, rss_limit_mb=args.rss_limit_mb)
            seconds = time.perf_counter() - start
            alive = process.poll() is None
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    result = {
        "benchmark": "mol_serve_fuzz",
        "mode": "quick" if args.quick else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "server_threads": 1},
        "cases": count,
        "seed": args.seed,
        "items": args.items,
        "seconds": seconds,
        "server_alive": alive,
        **measured,
    }
    print(f"mol-serve fuzz ({result['mode']}): {count} cases in {seconds:.1f} s, seed {args.seed}")
    for key, value in result["counts"].items():
        print(f"  {key:<32} {value:>7}")
    rss = result["rss_mb"]
    print(
        f"  RSS MB: start {rss['start']:.1f}, after warm-up {rss['after_warmup']:.1f}, end {rss['end']:.1f}"
    )
    print(f"  violations: {result['violation_count']}; server alive: {alive}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.output, json.dumps(result, indent=2))
    for violation in result["violations"][:10]:
        print(f"  VIOLATION {violation}", file=sys.stderr)
    return 0 if alive and result["violation_count"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
