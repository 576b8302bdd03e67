"""The ``mol.v1.RetrievalService`` servicer: Retrieve plus the admin RPCs.

Errors are translated to gRPC status codes in one place, :meth:`RetrievalServicer._call`:
:class:`~mol_serve.errors.ServeError` subclasses carry their code, other ``ConfigError`` / ``ShapeError``
become INVALID_ARGUMENT, ``ArtifactError`` FAILED_PRECONDITION, anything unexpected INTERNAL (logged,
never shown to the client beyond a generic message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import grpc

from mol_core.bundle import ModelBundle
from mol_core.errors import ArtifactError, ConfigError, ShapeError
from mol_core.proto.mol.v1 import retrieval_pb2, retrieval_pb2_grpc
from mol_serve.batcher import MicroBatcher
from mol_serve.codec import ParsedRequest, parse_request
from mol_serve.config import ServeConfig
from mol_serve.errors import Overloaded, ServeError, bounded_message
from mol_serve.metrics import ServerMetrics
from mol_serve.registry import IndexRegistry, LoadedIndex, load_and_validate

__all__ = ["Context", "RetrievalServicer", "check_outcome"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type stubs)


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):  # type: ignore[misc]
    """Answers RetrievalService RPCs from an :class:`IndexRegistry` through a :class:`MicroBatcher`."""

    def __init__(
        self,
        config: ServeConfig,
        registry: IndexRegistry,
        batcher: MicroBatcher,
        bundle: ModelBundle | None,
        metrics: ServerMetrics,
    ) -> None:
        self.config = config
        self.registry = registry
        self.batcher = batcher
        self.bundle = bundle
        self.metrics = metrics
        self._active = 0
        batcher.inflight = self.active_calls
        self._load_lock = asyncio.Lock()

    def active_calls(self) -> int:
        """Retrieve calls in progress."""
        return self._active

    async def _call(self, method: str, context: Context, body: Callable[[], Awaitable[T]]) -> T:
        """Runs ``body`` with metrics, translating every error to a gRPC status at this one boundary."""
        start = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        try:
            return await body()
        except ServeError as err:
            code, message = grpc.StatusCode[err.code], str(err)
        except (ConfigError, ShapeError) as err:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(err)
        except ArtifactError as err:
            code, message = grpc.StatusCode.FAILED_PRECONDITION, str(err)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            logger.exception("%s failed", method)
            code, message = grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log"
        finally:
            self.metrics.requests.labels(method=method, code=code.name).inc()
            self.metrics.latency.labels(method=method).observe(time.perf_counter() - start)
        await context.abort(code, bounded_message(message))
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    async def Retrieve(
        self, request: retrieval_pb2.RetrieveRequest, context: Context
    ) -> retrieval_pb2.RetrieveResponse:
        return await self._call("Retrieve", context, lambda: self._retrieve(request, context))

    async def _retrieve(
        self, request: retrieval_pb2.RetrieveRequest, context: Context
    ) -> retrieval_pb2.RetrieveResponse:
        start = time.perf_counter()
        with self._admitted():
            loaded = self._resolve(request)
            parsed = parse_request(request, loaded, self.bundle, self.config)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            outcome = await self.batcher.submit(loaded, parsed, deadline)
        check_outcome(outcome.ids, outcome.scores, parsed, loaded.index.num_items, loaded.version)
        response = retrieval_pb2.RetrieveResponse(index_version=loaded.version)
        for ids, scores in zip(outcome.ids, outcome.scores, strict=True):
            response.results.add(ids=ids, scores=scores)
        timings = response.timings
        timings.queue_us, timings.encode_us, timings.search_us = (
            outcome.queue_us,
            outcome.encode_us,
            outcome.search_us,
        )
        timings.total_us = int((time.perf_counter() - start) * 1e6)
        return response

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        """Counts one Retrieve call in progress; refuses it (Overloaded) at ``max_concurrent``."""
        if self._active >= self.config.max_concurrent:
            raise Overloaded(
                f"server at its limit of {self.config.max_concurrent} concurrent Retrieve calls; "
                "retry with backoff"
            )
        self._active += 1
        self.metrics.inflight.inc()
        try:
            yield
        finally:
            self._active -= 1
            self.metrics.inflight.dec()

    def _resolve(self, request: retrieval_pb2.RetrieveRequest) -> LoadedIndex:
        """The loaded index (or shard set) the request names, or the default alias's."""
        which = request.WhichOneof("index")
        return self.registry.resolve(
            alias=request.index_alias if which == "index_alias" else None,
            version=request.index_version if which == "index_version" else None,
        )

    async def ListIndexes(
        self, request: retrieval_pb2.ListIndexesRequest, context: Context
    ) -> retrieval_pb2.ListIndexesResponse:
        async def body() -> retrieval_pb2.ListIndexesResponse:
            versions, aliases = self.registry.snapshot()
            response = retrieval_pb2.ListIndexesResponse(default_alias=self.registry.default_alias or "")
            for loaded in versions:
                response.indexes.add(
                    index_version=loaded.version,
                    kind=loaded.kind,
                    num_items=loaded.index.num_items,
                    aliases=sorted(a for a, v in aliases.items() if v == loaded.version),
                    path=str(loaded.path),
                    default_algorithm=self.config.default_algorithm,
                )
            return response

        return await self._call("ListIndexes", context, body)

    async def LoadIndex(
        self, request: retrieval_pb2.LoadIndexRequest, context: Context
    ) -> retrieval_pb2.LoadIndexResponse:
        async def body() -> retrieval_pb2.LoadIndexResponse:
            if not request.path or not request.alias:
                raise ConfigError("LoadIndex needs both path and alias")
            async with self._load_lock:  # one load at a time; serving continues meanwhile
                loaded = await self._load(Path(request.path))
                previous = self.registry.install(loaded, request.alias)
            self.metrics.set_aliases(self.registry.snapshot()[1])
            logger.info("alias %r now serves %s (was %s)", request.alias, loaded.version, previous or "unset")
            return retrieval_pb2.LoadIndexResponse(
                index_version=loaded.version, previous_version=previous, load_us=loaded.load_us
            )

        return await self._call("LoadIndex", context, body)

    async def _load(self, path: Path) -> LoadedIndex:
        """Loads and validates the artifact at ``path`` in a worker thread (LoadIndex)."""
        device, faiss_device = self.config.index_devices()
        return await asyncio.get_running_loop().run_in_executor(
            None, load_and_validate, path, self.bundle, device, self.config.kernel, faiss_device
        )

    async def close(self) -> None:
        """Releases what the servicer holds beyond the batcher (nothing here; a front tier's channels)."""

    async def UnloadIndex(
        self, request: retrieval_pb2.UnloadIndexRequest, context: Context
    ) -> retrieval_pb2.UnloadIndexResponse:
        async def body() -> retrieval_pb2.UnloadIndexResponse:
            which = request.WhichOneof("target")
            versions, aliases = self.registry.unload(
                alias=request.alias if which == "alias" else None,
                version=request.index_version if which == "index_version" else None,
            )
            self.metrics.set_aliases(self.registry.snapshot()[1])
            return retrieval_pb2.UnloadIndexResponse(unloaded_versions=versions, removed_aliases=aliases)

        return await self._call("UnloadIndex", context, body)


def check_outcome(
    ids: list[list[int]], scores: list[list[float]], parsed: ParsedRequest, num_items: int, version: str
) -> None:
    """Never answer OK with a non-finite score, or with fewer exact results than ``min(k, N - excluded)``.

    Request validation keeps both from happening; this is the last guard, an INTERNAL error with a log line.
    """
    for row, (row_ids, row_scores) in enumerate(zip(ids, scores, strict=True)):
        if not all(math.isfinite(x) for x in row_scores):
            problem = "a non-finite score"
        elif parsed.params.algorithm == "exact" and len(row_ids) < min(
            parsed.k, num_items - len(set(parsed.exclude[row]))
        ):
            problem = f"{len(row_ids)} exact results where {parsed.k} were asked"
        else:
            continue
        logger.error("Retrieve on index %s: query %d got %s; answering INTERNAL", version, row, problem)
        raise ServeError(f"the search produced {problem} for query {row}; see the server log")
