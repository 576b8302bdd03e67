"""Request bytes that do not decode: INVALID_ARGUMENT with a plain message, and a rate-limited log line.

grpc decodes a request with the handler's deserializer before the servicer runs; when that raises, grpc
answers UNKNOWN and logs a traceback per call, so anyone who can reach the port could flood the log.
:class:`SafeDecodingInterceptor` wraps every handler's deserializer: bytes that fail to decode become a
marker, and the handler then aborts with INVALID_ARGUMENT naming the method, without class names or a
traceback. The log gets at most one line per :data:`LOG_INTERVAL_SECONDS` with the count since the last.

Authentication runs first (:class:`~mol_serve.auth.TokenAuthInterceptor` is outside this one and refuses
without decoding), so a caller without a token gets UNAUTHENTICATED whatever bytes it sends.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

__all__ = ["LOG_INTERVAL_SECONDS", "SafeDecodingInterceptor"]

logger = logging.getLogger(__name__)

#: Seconds between two log lines about undecodable requests.
LOG_INTERVAL_SECONDS = 60.0


class _Undecodable:
    """What a wrapped deserializer returns for bytes that do not decode."""

    def __init__(self, size: int) -> None:
        self.size = size


class _RateLimitedLog:
    """One warning per interval, counting the events in between (thread-safe: deserializers may run on
    grpc's threads)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._pending = 0

    def event(self, method: str, size: int) -> None:
        with self._lock:
            self._pending += 1
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            count, self._pending, self._last = self._pending, 0, now
        logger.warning(
            "%d request(s) whose bytes did not decode in the last %.0f s (latest: %s, %d bytes); "
            "answered INVALID_ARGUMENT",
            count,
            self.interval,
            method,
            size,
        )


class SafeDecodingInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Turns undecodable request bytes into INVALID_ARGUMENT (see the module docstring)."""

    def __init__(self, log_interval: float = LOG_INTERVAL_SECONDS) -> None:
        self._log = _RateLimitedLog(log_interval)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _guarded(handler, handler_call_details.method, self._log)


def _message(method: str) -> str:
    return f"the request bytes are not a valid request message for {method}"


def _guarded(handler: grpc.RpcMethodHandler, method: str, log: _RateLimitedLog) -> grpc.RpcMethodHandler:
    """``handler`` with a deserializer that never raises and behaviours that refuse what it could not
    decode."""
    decode = handler.request_deserializer

    def deserializer(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception:  # any decoding failure of client bytes; never an internal error
            log.event(method, len(data))
            return _Undecodable(len(data))

    args = {"request_deserializer": deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        stream_stream = handler.stream_stream

        async def both(requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]) -> Any:
            async for item in _items(stream_stream(_checked(requests, context, method), context)):
                yield item

        return grpc.stream_stream_rpc_method_handler(both, **args)
    if handler.request_streaming:
        stream_unary = handler.stream_unary

        async def many_to_one(requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]) -> Any:
            return await _result(stream_unary(_checked(requests, context, method), context))

        return grpc.stream_unary_rpc_method_handler(many_to_one, **args)
    if handler.response_streaming:
        unary_stream = handler.unary_stream

        async def one_to_many(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method))
            async for item in _items(unary_stream(request, context)):
                yield item

        return grpc.unary_stream_rpc_method_handler(one_to_many, **args)
    unary_unary = handler.unary_unary

    async def one_to_one(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method))
        return await _result(unary_unary(request, context))

    return grpc.unary_unary_rpc_method_handler(one_to_one, **args)


async def _checked(
    requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any], method: str
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method))
        yield request


async def _result(value: Any) -> Any:
    """The value of a behaviour that may be a coroutine function or a plain one."""
    return await value if inspect.isawaitable(value) else value


async def _items(stream: Any) -> AsyncIterator[Any]:
    """The items of a behaviour's response stream, an async or a plain iterator."""
    if hasattr(stream, "__aiter__"):
        async for item in stream:
            yield item
    else:
        for item in stream:
            yield item
