"""Python clients of a mol-serve server, synchronous and asyncio; importable without torch.

    with RetrievalClient("127.0.0.1:50051", token="...") as client:
        result = client.retrieve(histories=[[12, 7, 3]], top_k=10, exclude_history=True)
        result.ids[0], result.scores[0], result.index_version
        client.retrieve(texts=["do statins lower cholesterol?"], top_k=10)  # a text bundle's server

    async with AsyncRetrievalClient("127.0.0.1:50051") as client:
        result = await client.retrieve(embeddings=q, gating=g, top_k=10)   # q (B, Pq, d), g (B, P)

Every ``grpc.RpcError`` becomes a :mod:`mol_serve.errors` error in one place, :func:`raise_for_rpc_error`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mol_core.proto.mol.v1 import retrieval_pb2, retrieval_pb2_grpc
from mol_serve.errors import ServeError, error_for_code

__all__ = [
    "AsyncRetrievalClient",
    "RetrievalClient",
    "RetrieveResult",
    "build_request",
    "pack_tensor",
    "raise_for_rpc_error",
]

_DTYPES = {"float32": retrieval_pb2.DTYPE_FLOAT32, "float16": retrieval_pb2.DTYPE_FLOAT16}


@dataclass(frozen=True)
class RetrieveResult:
    """The answer of a Retrieve call.

    Attributes:
        ids: B lists of item ids, best first.
        scores: B lists of scores aligned with ``ids``.
        index_version: the index version that answered.
        timings: server timings in microseconds (``queue_us``, ``encode_us``, ``search_us``, ``total_us``).
        partial: True when a front tier answered without some shards (its shard policy is ``partial``).
        missing_shards: the shards that did not answer (empty unless ``partial``).
    """

    ids: list[list[int]]
    scores: list[list[float]]
    index_version: str
    timings: dict[str, int]
    partial: bool = False
    missing_shards: list[int] = field(default_factory=list)

    @classmethod
    def from_proto(cls, response: retrieval_pb2.RetrieveResponse) -> RetrieveResult:
        """Converts a ``RetrieveResponse``."""
        t = response.timings
        return cls(
            ids=[list(r.ids) for r in response.results],
            scores=[list(r.scores) for r in response.results],
            index_version=response.index_version,
            timings={
                "queue_us": t.queue_us,
                "encode_us": t.encode_us,
                "search_us": t.search_us,
                "total_us": t.total_us,
            },
            partial=response.partial,
            missing_shards=list(response.missing_shards),
        )


def raise_for_rpc_error(err: grpc.RpcError) -> ServeError:
    """The :mod:`mol_serve.errors` error for a failed call (the single translation point of the client)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return error_for_code(name, details or name)


def pack_tensor(array: Any, dtype: str = "float32") -> retrieval_pb2.Embeddings:
    """A numpy-convertible array -> ``Embeddings`` (packed little-endian, C order)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}; got {dtype!r}")
    values = np.ascontiguousarray(np.asarray(array, dtype="<f4" if dtype == "float32" else "<f2"))
    return retrieval_pb2.Embeddings(data=values.tobytes(), dtype=_DTYPES[dtype], shape=list(values.shape))


def build_request(
    *,
    top_k: int,
    embeddings: Any = None,
    gating: Any = None,
    histories: Sequence[Sequence[int]] | None = None,
    texts: Sequence[str] | None = None,
    timestamps: Sequence[Sequence[int]] | None = None,
    query_times: Sequence[int] | None = None,
    exclude_ids: Sequence[int] = (),
    exclude_history: bool = False,
    algorithm: str = "",
    params: Mapping[str, object] | None = None,
    index_alias: str | None = None,
    index_version: str | None = None,
    dtype: str = "float32",
) -> retrieval_pb2.RetrieveRequest:
    """Builds a ``RetrieveRequest`` from ``(B, Pq, d)`` embeddings (+ ``(B, P)`` gating), B histories,
    or B query texts (for a server with a text model bundle).

    ``timestamps`` (B lists aligned with ``histories``) and ``query_times`` (B times the queries are about;
    the server uses each history's last timestamp when absent) feed the bundle's time-aware encoder.
    """
    if sum(x is not None for x in (embeddings, histories, texts)) != 1:
        raise ValueError("pass exactly one of embeddings=, histories= or texts=")
    if isinstance(texts, str):
        raise ValueError("texts= takes a list of query texts; got a single string")
    request = retrieval_pb2.RetrieveRequest(
        top_k=top_k,
        exclude_ids=list(exclude_ids),
        exclude_history=exclude_history,
        algorithm=algorithm,
        algorithm_params={
            k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (params or {}).items()
        },
    )
    if index_version:
        request.index_version = index_version
    elif index_alias:
        request.index_alias = index_alias
    if texts is not None:
        for b, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts[{b}] must be a str; got {type(text).__name__}")
            request.queries.add(text=text)
    elif histories is not None:
        for b, items in enumerate(histories):
            query = request.queries.add()
            query.history.item_ids.extend(int(x) for x in items)
            if timestamps is not None:
                query.history.timestamps.extend(int(t) for t in timestamps[b])
            if query_times is not None:
                query.history.query_time = int(query_times[b])
    else:
        emb = np.asarray(embeddings, dtype=np.float32)
        gates = None if gating is None else np.asarray(gating, dtype=np.float32)
        for b in range(emb.shape[0]):
            query = request.queries.add(embeddings=pack_tensor(emb[b], dtype))
            if gates is not None:
                query.gating.CopyFrom(pack_tensor(gates[b], dtype))
    return request


def _channel_args(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def _credentials(
    root_cert: bytes | None, client_cert: bytes | None, client_key: bytes | None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=root_cert, private_key=client_key, certificate_chain=client_cert
    )


class _Base:
    def __init__(self, token: str | None, admin_token: str | None, timeout: float | None) -> None:
        self.token, self.admin_token, self.timeout = token, admin_token, timeout

    def _metadata(self, admin: bool = False) -> list[tuple[str, str]]:
        token = self.admin_token if admin and self.admin_token else self.token
        return [("authorization", f"Bearer {token}")] if token else []


class RetrievalClient(_Base):
    """A blocking client.

    Args:
        target: ``host:port``.
        token: serving bearer token; ``admin_token`` for admin calls.
        timeout: default deadline in seconds per call (``None`` = none).
        root_cert: PEM CA to verify a TLS server (enables TLS); ``client_cert`` / ``client_key`` for mTLS.
        server_name: TLS name override (e.g. the certificate's host name when dialing an IP).
        max_message_bytes: the channel's message size limit.

    Raises (from each call): the :mod:`mol_serve.errors` class of the gRPC status (``InvalidRequest``,
    ``NotFound``, ``Unauthenticated``, ``Overloaded``, ``DeadlineExceeded``, ``Unavailable``, ...).

    Example::

        with RetrievalClient("127.0.0.1:50051", token="s3cret") as client:
            result = client.retrieve(histories=[[12, 7, 301]], top_k=10, exclude_history=True)
            result.ids[0], result.scores[0]
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        admin_token: str | None = None,
        timeout: float | None = 30.0,
        root_cert: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        server_name: str | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        super().__init__(token, admin_token, timeout)
        options: list[tuple[str, Any]] = list(_channel_args(max_message_bytes))
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_cert is not None:
            creds = _credentials(root_cert, client_cert, client_key)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = retrieval_pb2_grpc.RetrievalServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def _invoke(self, method: Any, request: Any, admin: bool = False, timeout: float | None = None) -> Any:
        try:
            return method(request, metadata=self._metadata(admin), timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise raise_for_rpc_error(err) from None

    def retrieve(self, *, timeout: float | None = None, **kwargs: Any) -> RetrieveResult:
        """Top-k retrieval; keyword arguments as for :func:`build_request`."""
        return RetrieveResult.from_proto(
            self._invoke(self.stub.Retrieve, build_request(**kwargs), timeout=timeout)
        )

    def retrieve_raw(
        self, request: retrieval_pb2.RetrieveRequest, *, timeout: float | None = None
    ) -> retrieval_pb2.RetrieveResponse:
        """Sends a prepared ``RetrieveRequest``."""
        response: retrieval_pb2.RetrieveResponse = self._invoke(self.stub.Retrieve, request, timeout=timeout)
        return response

    def list_indexes(self) -> retrieval_pb2.ListIndexesResponse:
        """Loaded versions and aliases (admin token)."""
        response: retrieval_pb2.ListIndexesResponse = self._invoke(
            self.stub.ListIndexes, retrieval_pb2.ListIndexesRequest(), True
        )
        return response

    def load_index(
        self, path: str, alias: str, *, timeout: float | None = None
    ) -> retrieval_pb2.LoadIndexResponse:
        """Loads an artifact on the server and flips ``alias`` to it (admin token)."""
        request = retrieval_pb2.LoadIndexRequest(path=str(path), alias=alias)
        response: retrieval_pb2.LoadIndexResponse = self._invoke(self.stub.LoadIndex, request, True, timeout)
        return response

    def unload_index(
        self, *, alias: str | None = None, index_version: str | None = None
    ) -> retrieval_pb2.UnloadIndexResponse:
        """Removes an alias or a version (admin token)."""
        request = (
            retrieval_pb2.UnloadIndexRequest(alias=alias)
            if alias
            else retrieval_pb2.UnloadIndexRequest(index_version=index_version or "")
        )
        response: retrieval_pb2.UnloadIndexResponse = self._invoke(self.stub.UnloadIndex, request, True)
        return response

    def health(self, service: str = "") -> str:
        """The health status name (``SERVING``, ``NOT_SERVING``, ...)."""
        response = self._invoke(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRetrievalClient(_Base):
    """The asyncio client; same arguments and methods as :class:`RetrievalClient`, awaitable."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        admin_token: str | None = None,
        timeout: float | None = 30.0,
        root_cert: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        server_name: str | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        super().__init__(token, admin_token, timeout)
        options: list[tuple[str, Any]] = list(_channel_args(max_message_bytes))
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_cert is not None:
            self.channel = aio.secure_channel(
                target, _credentials(root_cert, client_cert, client_key), options=options
            )
        else:
            self.channel = aio.insecure_channel(target, options=options)
        self.stub = retrieval_pb2_grpc.RetrievalServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def _invoke(
        self, method: Any, request: Any, admin: bool = False, timeout: float | None = None
    ) -> Any:
        try:
            return await method(request, metadata=self._metadata(admin), timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise raise_for_rpc_error(err) from None

    async def retrieve(self, *, timeout: float | None = None, **kwargs: Any) -> RetrieveResult:
        """Top-k retrieval; keyword arguments as for :func:`build_request`."""
        return RetrieveResult.from_proto(
            await self._invoke(self.stub.Retrieve, build_request(**kwargs), timeout=timeout)
        )

    async def retrieve_raw(
        self, request: retrieval_pb2.RetrieveRequest, *, timeout: float | None = None
    ) -> retrieval_pb2.RetrieveResponse:
        """Sends a prepared ``RetrieveRequest``."""
        response: retrieval_pb2.RetrieveResponse = await self._invoke(
            self.stub.Retrieve, request, timeout=timeout
        )
        return response

    async def list_indexes(self) -> retrieval_pb2.ListIndexesResponse:
        """Loaded versions and aliases (admin token)."""
        response: retrieval_pb2.ListIndexesResponse = await self._invoke(
            self.stub.ListIndexes, retrieval_pb2.ListIndexesRequest(), True
        )
        return response

    async def load_index(
        self, path: str, alias: str, *, timeout: float | None = None
    ) -> retrieval_pb2.LoadIndexResponse:
        """Loads an artifact on the server and flips ``alias`` to it (admin token)."""
        request = retrieval_pb2.LoadIndexRequest(path=str(path), alias=alias)
        response: retrieval_pb2.LoadIndexResponse = await self._invoke(
            self.stub.LoadIndex, request, True, timeout
        )
        return response

    async def health(self, service: str = "") -> str:
        """The health status name."""
        response = await self._invoke(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def close(self) -> None:
        """Closes the channel."""
        await self.channel.close()

    async def __aenter__(self) -> AsyncRetrievalClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
