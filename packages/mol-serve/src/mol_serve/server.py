"""Building, starting and stopping a mol-serve gRPC server (``grpc.aio``).

    server, port = await create_server(ServeConfig(indexes={"prod": Path("artifacts/index")}))
    await server.start()
    ...
    await server.shutdown()       # health NOT_SERVING, drain in-flight calls, stop

:func:`serve` runs one until SIGTERM / SIGINT (what the ``mol-serve serve`` CLI does).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
import torch
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from mol_core.atomic import write_text_atomically
from mol_core.bundle import ModelBundle, load_bundle
from mol_core.errors import ArtifactError
from mol_core.proto.mol.v1 import retrieval_pb2, retrieval_pb2_grpc
from mol_core.threads import limit_tokenizer_threads, resolve_threads
from mol_serve.auth import TokenAuthInterceptor
from mol_serve.batcher import MicroBatcher
from mol_serve.config import ServeConfig
from mol_serve.decoding import SafeDecodingInterceptor
from mol_serve.errors import LoadRefused
from mol_serve.front import FrontServicer, load_shard_set
from mol_serve.metrics import ServerMetrics
from mol_serve.registry import IndexRegistry, load_and_validate
from mol_serve.service import RetrievalServicer

__all__ = ["SERVICE_NAME", "MolServer", "create_server", "serve"]

logger = logging.getLogger(__name__)

#: The fully qualified name of the retrieval service (health and reflection use it).
SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name


#: Seconds before the end of the grace period at which waiting calls are answered UNAVAILABLE, so they
#: get that clear status before grpc cancels whatever is left.
_ABORT_MARGIN_S = 0.25


class MolServer:
    """A built server: the grpc.aio server, its health servicer, batcher, registry and metrics."""

    def __init__(
        self,
        config: ServeConfig,
        grpc_server: aio.Server,
        health: health_aio.HealthServicer,
        batcher: MicroBatcher,
        registry: IndexRegistry,
        metrics: ServerMetrics,
        servicer: RetrievalServicer,
    ) -> None:
        self.config = config
        self.servicer = servicer
        self.grpc_server = grpc_server
        self.health = health
        self.batcher = batcher
        self.registry = registry
        self.metrics = metrics
        self.metrics_port: int | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Starts serving gRPC (and metrics, when configured); health goes to SERVING."""
        self.batcher.start()
        await self.grpc_server.start()
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(
                self.config.metrics_host or self.config.host,
                self.config.metrics_port,
                token=self.config.metrics_token,
            )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def shutdown(self, grace: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING, refuse new calls, let in-flight calls finish for up to
        ``grace`` seconds, then answer the calls still waiting UNAVAILABLE and stop without waiting for
        a running search."""
        if self._stopped.is_set():
            return
        grace = self.config.shutdown_grace_s if grace is None else grace
        logger.info("shutting down: health NOT_SERVING, draining for up to %.1f s", grace)
        await self.health.enter_graceful_shutdown()
        stopping = asyncio.ensure_future(self.grpc_server.stop(grace))
        try:  # returns early once every call has finished
            await asyncio.wait_for(asyncio.shield(stopping), max(0.0, grace - _ABORT_MARGIN_S))
        except TimeoutError:
            failed = self.batcher.abort(f"server shutting down: the call did not finish within {grace:g} s")
            logger.warning("grace period over: %d call(s) answered UNAVAILABLE", failed)
        await stopping
        await self.batcher.stop()
        await self.servicer.close()
        self.metrics.close()
        self._stopped.set()

    async def wait_closed(self) -> None:
        """Returns once :meth:`shutdown` has finished."""
        await self._stopped.wait()


def _credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        chain = (config.tls_key.read_bytes(), config.tls_cert.read_bytes())
        client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    except OSError as err:
        raise ArtifactError(f"cannot read TLS files: {err}") from err
    return grpc.ssl_server_credentials(
        [chain], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def create_server(config: ServeConfig, *, bundle: ModelBundle | None = None) -> tuple[MolServer, int]:
    """Loads the bundle and indexes of ``config`` and builds (does not start) the server.

    Args:
        config: the server configuration; ``port=0`` binds a free port.
        bundle: an already loaded bundle (tests), else ``config.bundle`` is loaded.

    Returns:
        ``(server, port)``: the :class:`MolServer` and the bound gRPC port.

    Raises:
        ArtifactError: the bundle, an index or a TLS file cannot be loaded (``LoadRefused`` for indexes).
    """
    threads = resolve_threads(config.torch_threads)  # the flag, MOL_THREADS, or the CPUs we may use
    torch.set_num_threads(threads)
    limit_tokenizer_threads(threads)  # text queries: tokenizers' own pool, not every CPU of the machine
    if bundle is None and config.bundle is not None:
        bundle = load_bundle(config.bundle)
    registry = IndexRegistry(config.resolved_default_alias)
    if config.shards:  # a front tier: the indexes are shard sets, served by the shard servers
        for alias, path in config.indexes.items():
            registry.install(load_shard_set(Path(path), bundle, len(config.shards)), alias)
    else:
        device, faiss_device = config.index_devices()
        for alias, path in config.indexes.items():
            loaded = load_and_validate(Path(path), bundle, device, config.kernel, faiss_device)
            registry.install(loaded, alias)
    metrics = ServerMetrics()
    metrics.set_aliases(registry.snapshot()[1])
    batcher = MicroBatcher(
        bundle,
        max_batch=config.max_batch,
        max_wait_s=config.max_wait_ms / 1000,
        on_batch=metrics.batch_queries.observe,
        on_skip=metrics.skipped.inc,
        threads=threads,
        fixed_wait=config.fixed_wait,
    )
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = aio.server(
        # authentication first (outermost), then the guard that turns undecodable bytes into INVALID_ARGUMENT
        interceptors=[TokenAuthInterceptor(config.token, config.admin_token), SafeDecodingInterceptor()],
        options=options,
    )
    kind = FrontServicer if config.shards else RetrievalServicer
    servicer = kind(config, registry, batcher, bundle, metrics)
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = (
        SERVICE_NAME,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    address = f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"
    credentials = _credentials(config)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as err:
        raise LoadRefused(f"cannot bind {address}: {err}", code="UNAVAILABLE") from err
    return MolServer(config, server, health, batcher, registry, metrics, servicer), port


async def serve(
    config: ServeConfig, *, on_started: asyncio.Future[None] | None = None, port_file: Path | None = None
) -> bool:
    """Runs a server until SIGTERM or SIGINT, then shuts it down gracefully.

    Returns whether a search was still running when the server stopped (its calls were answered
    UNAVAILABLE): the caller should then end the process at once (``os._exit``), since the interpreter's
    teardown cannot stop that thread cleanly.

    Args:
        config: the server configuration.
        on_started: resolved once serving (tests).
        port_file: if given, ``{"port": P, "metrics_port": M}`` is written there (atomically) once serving.
    """
    import json
    import os

    server, port = await create_server(config)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.shutdown()))
    if config.shards:
        logger.info(
            "mol-serve front tier listening on %s:%d (metrics port %s) over %d shards, policy %s",
            config.host,
            port,
            server.metrics_port,
            len(config.shards),
            config.shard_policy,
        )
    else:
        logger.info(
            "mol-serve listening on %s:%d (metrics port %s), searching on %s with kernel %s, %d thread(s)",
            config.host,
            port,
            server.metrics_port,
            config.resolved_device(),
            config.kernel,
            torch.get_num_threads(),
        )
    if port_file is not None:
        info = {"port": port, "metrics_port": server.metrics_port, "pid": os.getpid()}
        write_text_atomically(port_file, json.dumps(info))
    if on_started is not None:
        on_started.set_result(None)
    await server.wait_closed()
    return server.batcher.busy
