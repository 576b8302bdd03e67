"""The ``mol-serve`` command line: ``serve`` a server, ``query`` one, and the admin calls.

    mol-serve serve --index prod=artifacts/index --bundle artifacts/bundle --port 50051 --metrics-port 9464
    mol-serve serve --config serve.toml
    mol-serve serve --shard shard-0:50051 --shard shard-1:50051 --index prod=sets/prod --bundle b  # front
    mol-serve query --target 127.0.0.1:50051 --history 12,7,3 --top-k 10
    mol-serve query --target 127.0.0.1:50051 --text "do statins lower cholesterol?"   # a text bundle
    mol-serve indexes|load|unload --target ... --admin-token-file ...
    mol-serve health --target 127.0.0.1:50051        # exit 0 when SERVING (container health checks)

Exit codes: 0 success, 2 bad arguments or configuration, 3 the RPC failed (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mol_core.errors import MolError

__all__ = ["main"]


def _alias_path(text: str) -> tuple[str, Path]:
    alias, sep, path = text.partition("=")
    if not sep or not alias or not path:
        raise argparse.ArgumentTypeError(f"expected ALIAS=PATH; got {text!r}")
    return alias, Path(path)


def _read_token(value: str | None, file: Path | None) -> str | None:
    if file is not None:
        return file.read_text().strip()
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mol-serve", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a server until SIGTERM / SIGINT")
    serve.add_argument("--config", type=Path, help="TOML config file (flags given here override it)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port (0 = a free one; default 0)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus HTTP port (0 = a free one; default: off)")
    serve.add_argument("--metrics-host", help="the metrics endpoint's listen address (default: --host)")
    serve.add_argument(
        "--metrics-token-file", type=Path, help="file holding the bearer token the metrics endpoint requires"
    )
    serve.add_argument("--bundle", type=Path, help="model bundle directory (needed for history queries)")
    serve.add_argument(
        "--index", type=_alias_path, action="append", default=[], help="ALIAS=PATH index artifact; repeatable"
    )
    serve.add_argument(
        "--default-alias", help="alias used when a request names none (default: the first --index)"
    )
    serve.add_argument("--max-batch", type=int, help="most queries per micro-batch (default 64)")
    serve.add_argument(
        "--max-wait-ms", type=float, help="longest wait for a micro-batch to fill (default 2 ms)"
    )
    serve.add_argument(
        "--fixed-wait",
        action="store_true",
        default=None,
        help="always wait --max-wait-ms for a batch to fill (default: only while other calls run)",
    )
    serve.add_argument(
        "--max-concurrent", type=int, help="concurrent Retrieve calls before RESOURCE_EXHAUSTED"
    )
    serve.add_argument("--max-top-k", type=int, help="largest top_k accepted (default 1000)")
    serve.add_argument("--max-query-chars", type=int, help="longest text query in characters (default 4096)")
    serve.add_argument("--max-message-bytes", type=int, help="gRPC message size limit (default 16 MiB)")
    serve.add_argument(
        "--default-algorithm",
        help="exact, topk_per_embd, topk_avg, comb_topk, or adaptive / pq / hierarchical for indexes "
        "of that kind (default exact)",
    )
    serve.add_argument("--token-file", type=Path, help="file holding the serving bearer token")
    serve.add_argument("--admin-token-file", type=Path, help="file holding the admin bearer token")
    serve.add_argument(
        "--tls-cert", type=Path, help="PEM server certificate chain (enables TLS with --tls-key)"
    )
    serve.add_argument("--tls-key", type=Path, help="PEM server private key")
    serve.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA that client certificates must chain to (mTLS)"
    )
    serve.add_argument(
        "--insecure", action="store_true", default=None, help="allow a non-loopback address without a token"
    )
    serve.add_argument(
        "--torch-threads",
        type=int,
        help="intra-op threads for search (default: MOL_THREADS, else the CPUs this process may use)",
    )
    serve.add_argument(
        "--device",
        help="where exact indexes search: auto (a CUDA GPU when torch sees one), cpu, cuda or cuda:N",
    )
    serve.add_argument(
        "--kernel",
        help=(
            "exact-scan kernel: auto (fused Triton top-k on a GPU, the fused C++ kernel on a CPU, when the "
            "index fits them), torch, torch-bf16 (scores in bf16: on request only), cpu, triton"
        ),
    )
    serve.add_argument(
        "--shutdown-grace-s", type=float, help="seconds SIGTERM waits for in-flight calls (default 5)"
    )
    serve.add_argument(
        "--port-file", type=Path, help="write {port, metrics_port, pid} JSON here once serving"
    )
    front = serve.add_argument_group(
        "front tier", "serve shard sets (mol-index build --shards) by fanning requests out to shard servers"
    )
    front.add_argument(
        "--shard",
        action="append",
        default=[],
        metavar="TARGET",
        help="gRPC target of shard s, in shard order (host:port, dns:///name:port for the replicas behind "
        "a DNS name, ipv4:a:p,b:p); repeatable; makes this server a front tier",
    )
    front.add_argument("--shard-policy", help="when a shard does not answer: fail (UNAVAILABLE) or partial")
    front.add_argument(
        "--shard-timeout-s", type=float, help="a shard call's deadline when the caller sets none (default 10)"
    )
    front.add_argument(
        "--shard-margin-ms", type=float, help="time kept from the caller's deadline to merge (default 20)"
    )
    front.add_argument("--shard-token-file", type=Path, help="file holding the bearer token sent to shards")
    front.add_argument("--shard-root-cert", type=Path, help="PEM CA of the shard servers (enables TLS)")
    front.add_argument("--shard-client-cert", type=Path, help="PEM client certificate for the shards (mTLS)")
    front.add_argument("--shard-client-key", type=Path, help="PEM client key for the shards (mTLS)")

    for name, help_text in (
        ("query", "send one Retrieve call and print the results as JSON"),
        ("indexes", "list loaded indexes and aliases (admin)"),
        ("load", "load an index artifact and flip an alias to it (admin)"),
        ("unload", "remove an alias or an index version (admin)"),
        ("health", "print the server's gRPC health status; exit 0 when SERVING, 3 otherwise"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--target", default="127.0.0.1:50051", help="server host:port (default 127.0.0.1:50051)"
        )
        p.add_argument("--token-file", type=Path, help="file holding the bearer token")
        p.add_argument("--admin-token-file", type=Path, help="file holding the admin bearer token")
        p.add_argument("--root-cert", type=Path, help="PEM CA to verify a TLS server (enables TLS)")
        p.add_argument("--client-cert", type=Path, help="PEM client certificate (mTLS)")
        p.add_argument("--client-key", type=Path, help="PEM client key (mTLS)")
        p.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds (default 30)")
        if name == "query":
            p.add_argument(
                "--history",
                action="append",
                default=[],
                help="comma-separated item ids; repeatable (one per query)",
            )
            p.add_argument(
                "--text",
                action="append",
                default=[],
                help="a query text (servers with a text model bundle); repeatable (one per query)",
            )
            p.add_argument("--embeddings-npy", type=Path, help=".npy file of (B, Pq, d) query embeddings")
            p.add_argument("--gating-npy", type=Path, help=".npy file of (B, P) query gating features")
            p.add_argument("--top-k", type=int, default=10, help="results per query (default 10)")
            p.add_argument("--index-alias", help="index alias (default: the server's)")
            p.add_argument("--algorithm", default="", help="retrieval algorithm (default: the server's)")
            p.add_argument(
                "--param", action="append", default=[], help="KEY=VALUE algorithm parameter; repeatable"
            )
            p.add_argument(
                "--exclude-history", action="store_true", help="never return a query's history items"
            )
        if name == "load":
            p.add_argument("path", help="artifact directory as the server sees it")
            p.add_argument("--alias", required=True, help="alias to point at the new version")
        if name == "unload":
            p.add_argument("--alias", help="alias to remove")
            p.add_argument("--index-version", help="version to unload")
    return parser


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from mol_serve.config import ServeConfig, load_config, with_overrides
    from mol_serve.server import serve

    overrides = {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "metrics_host": args.metrics_host,
        "metrics_token": _read_token(None, args.metrics_token_file),
        "bundle": args.bundle,
        "indexes": dict(args.index) or None,
        "default_alias": args.default_alias,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "fixed_wait": args.fixed_wait,
        "max_concurrent": args.max_concurrent,
        "max_top_k": args.max_top_k,
        "max_query_chars": args.max_query_chars,
        "max_message_bytes": args.max_message_bytes,
        "default_algorithm": args.default_algorithm,
        "token": _read_token(None, args.token_file),
        "admin_token": _read_token(None, args.admin_token_file),
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "insecure": args.insecure,
        "torch_threads": args.torch_threads,
        "device": args.device,
        "kernel": args.kernel,
        "shutdown_grace_s": args.shutdown_grace_s,
        "shards": tuple(args.shard) or None,
        "shard_policy": args.shard_policy,
        "shard_timeout_s": args.shard_timeout_s,
        "shard_margin_ms": args.shard_margin_ms,
        "shard_token": _read_token(None, args.shard_token_file),
        "shard_root_cert": args.shard_root_cert,
        "shard_client_cert": args.shard_client_cert,
        "shard_client_key": args.shard_client_key,
    }
    config = (
        load_config(args.config, **overrides) if args.config else with_overrides(ServeConfig(), **overrides)
    )
    asyncio.run(serve(config, port_file=args.port_file))
    # The server has shut down gracefully (calls answered, listeners closed). End the process here and
    # skip the interpreter teardown: a search still running in a thread (its calls got UNAVAILABLE) cannot
    # be stopped there, and once, after a clean shutdown with the C++ kernel loaded, the teardown aborted
    # ("terminate called without an active exception", exit -6; cause not found).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _client(args: argparse.Namespace) -> object:
    from mol_serve.client import RetrievalClient

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None

    return RetrievalClient(
        args.target,
        token=_read_token(None, args.token_file),
        admin_token=_read_token(None, args.admin_token_file),
        timeout=args.timeout,
        root_cert=read(args.root_cert),
        client_cert=read(args.client_cert),
        client_key=read(args.client_key),
    )


def _call(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from mol_serve.client import RetrievalClient

    client = _client(args)
    assert isinstance(client, RetrievalClient)
    with client:
        if args.command == "query":
            import numpy as np

            params = dict(p.split("=", 1) for p in args.param)
            kwargs: dict[str, Any] = {}
            if sum(map(bool, (args.embeddings_npy, args.history, args.text))) != 1:
                raise ValueError(
                    "query needs one of --history (repeatable), --text (repeatable) or --embeddings-npy"
                )
            if args.embeddings_npy:
                kwargs["embeddings"] = np.load(args.embeddings_npy)
                kwargs["gating"] = np.load(args.gating_npy) if args.gating_npy else None
            elif args.text:
                kwargs["texts"] = list(args.text)
            else:
                kwargs["histories"] = [[int(x) for x in h.split(",") if x] for h in args.history]
            result = client.retrieve(
                top_k=args.top_k,
                algorithm=args.algorithm,
                params=params,
                index_alias=args.index_alias,
                exclude_history=args.exclude_history,
                **kwargs,
            )
            print(
                json.dumps(
                    {
                        "index_version": result.index_version,
                        "ids": result.ids,
                        "scores": result.scores,
                        "timings": result.timings,
                        "partial": result.partial,
                        "missing_shards": result.missing_shards,
                    }
                )
            )
            return 0
        if args.command == "health":
            status = client.health()
            print(status)
            return 0 if status == "SERVING" else 3
        if args.command == "indexes":
            response: object = client.list_indexes()
        elif args.command == "load":
            response = client.load_index(args.path, args.alias)
        else:
            response = client.unload_index(alias=args.alias, index_version=args.index_version)
        print(json.dumps(MessageToDict(response)))  # type: ignore[arg-type]
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from mol_serve.errors import ServeError

    try:
        return _serve(args) if args.command == "serve" else _call(args)
    except ServeError as err:
        print(f"mol-serve {args.command}: {err.code}: {err}", file=sys.stderr)
        return 3
    except (MolError, ValueError, OSError) as err:
        print(f"mol-serve {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
