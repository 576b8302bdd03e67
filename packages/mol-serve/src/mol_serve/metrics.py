"""Prometheus metrics of one server, in their own registry, served over HTTP.

The endpoint answers ``GET /metrics`` only, optionally behind its own bearer token and on its own bind
address (``ServeConfig.metrics_token`` / ``metrics_host``). Exported series (prefix ``mol_serve_``):

- ``requests_total{method, code}``: finished RPCs by method and gRPC status code;
- ``request_latency_seconds{method}``: histogram of server-side RPC latency;
- ``batch_queries``: histogram of queries per search run by the micro-batcher;
- ``inflight_requests``: Retrieve RPCs in progress;
- ``index_info{alias, index_version}``: 1 for each alias and the version it points at;
- ``skipped_requests_total``: requests dropped unanswered because cancelled or expired while queued;
- ``shard_failures_total{shard, code}`` (front tier): shard calls that failed, by shard and status code;
- ``shard_latency_seconds{shard}`` (front tier): histogram of each shard call's latency.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """The metric families of one server (a private registry, so several servers fit in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mol_serve_requests",
            "Finished RPCs by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mol_serve_request_latency_seconds",
            "Server-side RPC latency.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_queries = Histogram(
            "mol_serve_batch_queries",
            "Queries per search run.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "mol_serve_inflight_requests", "Retrieve RPCs in progress.", registry=self.registry
        )
        self.index_info = Gauge(
            "mol_serve_index_info",
            "1 per alias and the index version it points at.",
            ["alias", "index_version"],
            registry=self.registry,
        )
        self.skipped = Counter(
            "mol_serve_skipped_requests",
            "Requests dropped because cancelled or expired in the queue.",
            registry=self.registry,
        )
        self.shard_failures = Counter(
            "mol_serve_shard_failures",
            "Front tier: shard calls that failed, by shard number and status code.",
            ["shard", "code"],
            registry=self.registry,
        )
        self.shard_latency = Histogram(
            "mol_serve_shard_latency_seconds",
            "Front tier: latency of each shard call.",
            ["shard"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def set_aliases(self, aliases: dict[str, str]) -> None:
        """Replaces the ``index_info`` series with the current alias -> version map."""
        self.index_info.clear()
        for alias, version in aliases.items():
            self.index_info.labels(alias=alias, index_version=version).set(1)

    def serve_http(self, host: str, port: int, token: str | None = None) -> int:
        """Starts the HTTP endpoint in a daemon thread; returns the bound port.

        Only ``GET /metrics`` answers (anything else: 404); with ``token``, only with the header
        ``Authorization: Bearer <token>`` (else 401), compared in constant time.
        """
        app = _metrics_only(make_wsgi_app(self.registry), token)
        self._http = make_server(host, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="mol-serve-metrics", daemon=True
        )
        self._thread.start()
        return int(self._http.server_port)

    def close(self) -> None:
        """Stops the HTTP endpoint, if started."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: scrapes every few seconds would fill the server log."""


Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _metrics_only(app: Wsgi, token: str | None) -> Wsgi:
    """``app`` behind a path check (``/metrics`` only) and, with ``token``, a bearer-token check."""
    expected = None if token is None else f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only GET /metrics is served here\n"]
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode("latin-1", "replace")
        if expected is not None and not hmac.compare_digest(given, expected):
            start_response(
                "401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")]
            )
            return [b"missing or wrong 'Authorization: Bearer <metrics token>' header\n"]
        return app(environ, start_response)

    return guarded
