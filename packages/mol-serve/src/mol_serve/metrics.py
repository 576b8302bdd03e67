"""Prometheus metrics of one server, in their own registry, served over HTTP.

Exported series (prefix ``mol_serve_``):

- ``requests_total{method, code}``: finished RPCs by method and gRPC status code;
- ``request_latency_seconds{method}``: histogram of server-side RPC latency;
- ``batch_queries``: histogram of queries per search run by the micro-batcher;
- ``inflight_requests``: Retrieve RPCs in progress;
- ``index_info{alias, index_version}``: 1 for each alias and the version it points at;
- ``skipped_requests_total``: requests dropped unanswered because cancelled or expired while queued.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def set_aliases(self, aliases: dict[str, str]) -> None:
        """Replaces the ``index_info`` series with the current alias -> version map."""
        self.index_info.clear()
        for alias, version in aliases.items():
            self.index_info.labels(alias=alias, index_version=version).set(1)

    def serve_http(self, host: str, port: int) -> int:
        """Starts the ``/metrics`` HTTP endpoint in a daemon thread; returns the bound port."""
        self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        """Stops the HTTP endpoint, if started."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
