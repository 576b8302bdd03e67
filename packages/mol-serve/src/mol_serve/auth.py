"""Bearer-token authentication for every RPC, as a grpc.aio server interceptor.

Clients send ``authorization: Bearer <token>`` metadata. Serving RPCs (Retrieve, reflection) accept the
serving or the admin token; admin RPCs (ListIndexes, LoadIndex, UnloadIndex) only the admin token. The
gRPC health service (``grpc.health.v1.Health``) needs no token, so that orchestrators' gRPC probes
(Kubernetes ``grpc:`` probes send no metadata) can call it; it tells only SERVING or NOT_SERVING.
Tokens are compared in constant time, before the request bytes are decoded: a refused call's bytes are
never parsed. A server without any token accepts everything (loopback only, see
:class:`~mol_serve.config.ServeConfig`).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

__all__ = ["ADMIN_METHODS", "OPEN_METHODS", "TokenAuthInterceptor"]

#: Full method names that need the admin token.
ADMIN_METHODS = frozenset(
    f"/mol.v1.RetrievalService/{name}" for name in ("ListIndexes", "LoadIndex", "UnloadIndex")
)

#: Full method names that need no token: the gRPC health service, for orchestrators' probes.
OPEN_METHODS = frozenset(f"/grpc.health.v1.Health/{name}" for name in ("Check", "Watch"))


def _matches(given: str | None, expected: str | None) -> bool:
    return (
        given is not None and expected is not None and hmac.compare_digest(given.encode(), expected.encode())
    )


class TokenAuthInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without the right bearer token (UNAUTHENTICATED / PERMISSION_DENIED).

    Args:
        token: the serving token, or ``None``.
        admin_token: the admin token, or ``None`` (admin RPCs then need ``token is None``).
    """

    def __init__(self, token: str | None, admin_token: str | None) -> None:
        self.token = token
        self.admin_token = admin_token

    def check(
        self, method: str, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> tuple[grpc.StatusCode, str] | None:
        """``None`` when the call may proceed, else the status code and message to refuse it with."""
        if (self.token is None and self.admin_token is None) or method in OPEN_METHODS:
            return None
        header = next((v for k, v in metadata if k == "authorization"), None)
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        given = header[7:].strip() if header and header[:7].lower() == "bearer " else None
        if method in ADMIN_METHODS:
            if self.admin_token is None:
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "admin RPCs are disabled: start the server with an admin token",
                )
            if _matches(given, self.admin_token):
                return None
            if given is None:
                return (
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing 'authorization: Bearer <admin token>' metadata",
                )
            return grpc.StatusCode.PERMISSION_DENIED, "this RPC needs the admin token"
        if self.token is None or _matches(given, self.token) or _matches(given, self.admin_token):
            return None
        if given is None:
            return grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"
        return grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        refusal = self.check(
            handler_call_details.method, tuple(handler_call_details.invocation_metadata or ())
        )
        if refusal is None or handler is None:
            return handler
        code, message = refusal
        return _refusing_handler(handler, code, message)


def _refusing_handler(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that aborts with ``code``."""

    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield None  # pragma: no cover - abort raises

    # no request deserializer: a refused call's bytes are never decoded (they may be anything)
    args = {"request_deserializer": None, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **args)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **args)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **args)
    return grpc.unary_unary_rpc_method_handler(unary, **args)
