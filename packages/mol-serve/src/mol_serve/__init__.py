"""mol-serve: the gRPC retrieval serving tier for mol indexes, and its Python client.

- :mod:`mol_serve.server`: :func:`~mol_serve.server.create_server` / :func:`~mol_serve.server.serve` on
  ``grpc.aio`` with dynamic micro-batching, deadlines, a concurrency limit, health, reflection,
  Prometheus metrics, bearer tokens, TLS / mTLS and hot index reload (imports torch; load it explicitly);
- :mod:`mol_serve.client`: :class:`RetrievalClient` and :class:`AsyncRetrievalClient` (no torch needed);
- :mod:`mol_serve.errors`: the errors both sides raise, subclasses of :mod:`mol_core.errors`;
- :class:`ServeConfig` / :func:`load_config`: server configuration from flags or a TOML file;
- the CLI ``mol-serve serve|query|indexes|load|unload``.

Importing ``mol_serve`` (and the client) does not import torch: ``mol_core`` loads its torch-based parts
lazily, and the client needs only :mod:`mol_core.errors` and :mod:`mol_core.proto`.
"""

from mol_serve.client import AsyncRetrievalClient, RetrievalClient, RetrieveResult
from mol_serve.config import ServeConfig, load_config
from mol_serve.errors import (
    DeadlineExceeded,
    InvalidRequest,
    LoadRefused,
    NotFound,
    Overloaded,
    ServeError,
    Unauthenticated,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncRetrievalClient",
    "DeadlineExceeded",
    "InvalidRequest",
    "LoadRefused",
    "NotFound",
    "Overloaded",
    "RetrievalClient",
    "RetrieveResult",
    "ServeConfig",
    "ServeError",
    "Unauthenticated",
    "Unavailable",
    "__version__",
    "load_config",
]
