"""mol-serve's errors, subclasses of :mod:`mol_core.errors`, and their gRPC status codes.

Server side, :class:`InvalidRequest` (a ``ConfigError``, so a ``ValueError``) is raised for any malformed
request and becomes ``INVALID_ARGUMENT``; the service translates every error in one place
(:func:`status_of`). Client side, :func:`mol_serve.client.raise_for_rpc_error` maps a ``grpc.RpcError``
back onto these classes, so callers catch library errors, not transport ones.

    MolError
    └── ServeError                  any failed RPC (has .code, the gRPC status name)
        ├── InvalidRequest          INVALID_ARGUMENT (also a ConfigError / ValueError)
        ├── NotFound                NOT_FOUND: unknown alias or version in an admin RPC
        ├── Unauthenticated         UNAUTHENTICATED / PERMISSION_DENIED: missing or wrong token
        ├── Overloaded              RESOURCE_EXHAUSTED: too many concurrent RPCs
        ├── DeadlineExceeded        DEADLINE_EXCEEDED / CANCELLED
        ├── LoadRefused             FAILED_PRECONDITION: LoadIndex refused a bad artifact
        └── Unavailable             UNAVAILABLE: server down, shutting down or unreachable
"""

from __future__ import annotations

from mol_core.errors import ArtifactError, ConfigError, MolError

__all__ = [
    "MAX_ECHO_CHARS",
    "MAX_MESSAGE_CHARS",
    "DeadlineExceeded",
    "InvalidRequest",
    "LoadRefused",
    "NotFound",
    "Overloaded",
    "ServeError",
    "Unauthenticated",
    "Unavailable",
    "bounded_message",
    "echo",
    "error_for_code",
]

#: Characters of a client-sent string repeated in an error message.
MAX_ECHO_CHARS = 64
#: Characters of any error message sent to a client.
MAX_MESSAGE_CHARS = 1024


def echo(text: str) -> str:
    """``repr(text)``, cut to :data:`MAX_ECHO_CHARS` characters and saying how long it was if cut."""
    if len(text) <= MAX_ECHO_CHARS:
        return repr(text)
    return f"{text[:MAX_ECHO_CHARS]!r}... ({len(text)} characters)"


def bounded_message(message: str) -> str:
    """``message`` cut to :data:`MAX_MESSAGE_CHARS` characters, saying so if cut."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}... (message cut from {len(message)} characters)"


class ServeError(MolError):
    """A serving RPC failed; ``code`` is the gRPC status code name (e.g. ``"INVALID_ARGUMENT"``)."""

    code = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidRequest(ServeError, ConfigError):
    """A malformed request: unknown index or item id, empty history, k out of range, bad bytes/dtype."""

    code = "INVALID_ARGUMENT"


class NotFound(ServeError):
    """An admin RPC named an alias or index version that is not loaded."""

    code = "NOT_FOUND"


class Unauthenticated(ServeError):
    """The call carried no bearer token, a wrong one, or a serving token where the admin token is needed."""

    code = "UNAUTHENTICATED"


class Overloaded(ServeError):
    """The server is at its concurrent-RPC limit; retry later with backoff."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServeError):
    """The call's deadline expired (or it was cancelled) before the server answered."""

    code = "DEADLINE_EXCEEDED"


class LoadRefused(ServeError, ArtifactError):
    """LoadIndex refused an artifact (missing, corrupt, incompatible); the alias kept its old version."""

    code = "FAILED_PRECONDITION"


class Unavailable(ServeError):
    """The server cannot be reached, or is shutting down."""

    code = "UNAVAILABLE"


_BY_CODE: dict[str, type[ServeError]] = {
    "INVALID_ARGUMENT": InvalidRequest,
    "OUT_OF_RANGE": InvalidRequest,
    "NOT_FOUND": NotFound,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": Unauthenticated,
    "RESOURCE_EXHAUSTED": Overloaded,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "CANCELLED": DeadlineExceeded,
    "FAILED_PRECONDITION": LoadRefused,
    "UNAVAILABLE": Unavailable,
}


def error_for_code(code: str, message: str) -> ServeError:
    """The library error for a gRPC status code name and its details message."""
    cls = _BY_CODE.get(code, ServeError)
    return cls(message, code=code)
