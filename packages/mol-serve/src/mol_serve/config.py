"""``ServeConfig``: everything a mol-serve server is started with, from flags or a TOML file.

A TOML config file holds the same keys as :class:`ServeConfig`, with index aliases in a table::

    host = "127.0.0.1"
    port = 50051
    metrics_port = 9464
    bundle = "artifacts/bundle"          # optional: needed for history queries
    default_alias = "prod"
    token = "serving-secret"             # or token_file = "..."
    admin_token = "admin-secret"
    [indexes]
    prod = "artifacts/index-v1"

Relative paths in a file are resolved against the file's directory.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mol_core.errors import ConfigError
from mol_core.settings import check_settings, setting

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ALGORITHMS", "KERNELS", "SHARD_POLICIES", "ServeConfig", "is_loopback", "load_config"]

#: Retrieval algorithms a request may name (mol-index ``Algorithm`` values).
ALGORITHMS = (
    "exact",
    "topk_per_embd",
    "topk_avg",
    "comb_topk",
    "linearized",
    "adaptive",
    "pq",
    "hierarchical",
)
#: ``mol_index.SearchParams.kernel`` values (kept here so that the client imports without torch).
KERNELS = ("auto", "torch", "torch-bf16", "cpu", "triton")
#: What a front tier answers when a shard does not: ``fail`` (UNAVAILABLE) or ``partial`` (the other
#: shards' merged results, marked ``partial`` in the response).
SHARD_POLICIES = ("fail", "partial")

_PATH_KEYS = (
    "bundle",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "token_file",
    "admin_token_file",
    "metrics_token_file",
    "shard_token_file",
    "shard_root_cert",
    "shard_client_cert",
    "shard_client_key",
)


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How a server is started (see docs/mol-serve.md, "Configuration").

    Every field is checked when the object is built (:mod:`mol_core.settings`); a wrong value raises
    ``ConfigError`` naming the field, e.g. ``max_batch must be >= 1; got 0``.

    Example::

        ServeConfig(port=50051, bundle=Path("bundles/ml1m"), indexes={"prod": Path("indexes/prod")})

    Attributes:
        host: listen address; anything but loopback needs a token (or ``insecure``).
        port: gRPC port; 0 picks a free one (returned by ``create_server``).
        metrics_port: Prometheus HTTP port (0 = a free one), ``None`` = no metrics endpoint.
        metrics_host: the metrics endpoint's listen address (``None`` = ``host``), e.g. loopback or an
            internal interface only.
        metrics_token: bearer token the metrics endpoint requires (``None`` = none).
        bundle: model bundle directory (for history queries, or text queries with a text bundle), or
            ``None`` (embeddings queries only).
        indexes: alias -> index artifact directory, loaded at start.
        default_alias: alias used when a request names none (default: the first of ``indexes``).
        max_batch: most queries the micro-batcher runs in one search.
        max_wait_ms: longest a query waits for others to join its batch (only while other calls are in
            progress, unless ``fixed_wait``).
        fixed_wait: always wait ``max_wait_ms`` for a batch to fill, even for a lone call (tests, or to
            trade latency for larger batches).
        max_concurrent: concurrent Retrieve RPCs; more are answered RESOURCE_EXHAUSTED.
        max_top_k: largest ``top_k`` a request may ask for.
        max_queries: largest number of queries B in one request.
        max_query_chars: longest text query, in characters (text bundles; the tokenizer then cuts it at
            the bundle's ``max_query_tokens``).
        max_message_bytes: gRPC receive/send message size limit.
        default_algorithm: algorithm used when a request leaves it empty.
        default_k_prime: ``K'`` for the RAILS algorithms when a request does not set ``k_prime``.
        token: bearer token every RPC must carry (``None`` = no auth).
        admin_token: bearer token for the admin RPCs (``None`` = admin RPCs disabled unless no token
            is configured at all, i.e. a local unauthenticated server).
        tls_cert: PEM server certificate chain; with ``tls_key`` enables TLS.
        tls_key: PEM server private key.
        tls_client_ca: PEM CA bundle; when set clients must present a certificate it signed (mTLS).
        insecure: allow a non-loopback listen address without a token.
        torch_threads: intra-op threads for search (``None``: ``MOL_THREADS``, else the CPUs this process
            may run on, from its affinity mask and cgroup quota; :func:`mol_core.threads.resolve_threads`).
        device: where indexes live and searches run: ``auto`` (the first CUDA GPU when torch sees one,
            else the CPU; FAISS-stage indexes stay on the CPU), ``cpu``, ``cuda`` or ``cuda:N`` (FAISS-stage
            indexes are then refused). The bundle's query encoder runs on the CPU.
        kernel: the exact scan's kernel (``mol_index.SearchParams.kernel``): ``auto`` (the fused Triton
            top-k on a GPU, the fused C++ kernel on a CPU, when the index fits them, else torch),
            ``torch``, ``torch-bf16`` (scores computed in bf16; only on request), ``cpu`` or ``triton``.
        shutdown_grace_s: how long SIGTERM waits for in-flight RPCs before stopping.
        shards: gRPC targets of the shard servers, in shard-set order (``host:port``, ``dns:///name:port``
            for every replica behind a DNS name, ``ipv4:a:p,b:p`` for a fixed replica list). Non-empty
            makes this server a **front tier**: ``indexes`` then name shard-set folders, and each request
            is encoded here once, fanned out to the S shards and their top-k merged (docs/mol-serve.md,
            "Sharded serving").
        shard_policy: what a front tier answers when a shard fails or misses the deadline: ``fail``
            (UNAVAILABLE) or ``partial`` (the answering shards' results, marked partial).
        shard_timeout_s: a shard call's deadline when the caller set none; with a caller deadline, the
            shorter of the two (less ``shard_margin_ms``).
        shard_margin_ms: time kept back from the caller's deadline for merging and answering, so a
            ``partial`` front tier can answer before the caller gives up.
        shard_token: bearer token the front tier sends to its shard servers (``None`` = none).
        shard_root_cert: PEM CA that shard servers' TLS certificates chain to (enables TLS to the shards).
        shard_client_cert: PEM client certificate the front tier presents to the shards (mTLS).
        shard_client_key: PEM key of ``shard_client_cert``.
    """

    host: str = "127.0.0.1"
    port: int = setting(0, minimum=0, maximum=65535)
    metrics_port: int | None = setting(None, minimum=0, maximum=65535)
    metrics_host: str | None = None
    metrics_token: str | None = None
    bundle: Path | None = None
    indexes: dict[str, Path] = field(default_factory=dict)
    default_alias: str | None = None
    max_batch: int = setting(64, minimum=1)
    max_wait_ms: float = setting(2.0, minimum=0)
    fixed_wait: bool = False
    max_concurrent: int = setting(256, minimum=1)
    max_top_k: int = setting(1000, minimum=1)
    max_queries: int = setting(1024, minimum=1)
    max_query_chars: int = setting(4096, minimum=1)
    max_message_bytes: int = setting(16 * 1024 * 1024, minimum=1024)
    default_algorithm: str = setting("exact", choices=ALGORITHMS)
    default_k_prime: int = setting(64, minimum=1)
    token: str | None = None
    admin_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    torch_threads: int | None = setting(None, minimum=1)
    device: str = setting(
        "auto", choices=("auto", "cpu", "cuda"), pattern=r"cuda:\d+", expected="auto, cpu, cuda or cuda:N"
    )
    kernel: str = setting("auto", choices=KERNELS)
    shutdown_grace_s: float = setting(5.0, minimum=0)
    shards: tuple[str, ...] = ()
    shard_policy: str = setting("fail", choices=SHARD_POLICIES)
    shard_timeout_s: float = setting(10.0, minimum=0.001)
    shard_margin_ms: float = setting(20.0, minimum=0)
    shard_token: str | None = None
    shard_root_cert: Path | None = None
    shard_client_cert: Path | None = None
    shard_client_key: Path | None = None

    def __post_init__(self) -> None:
        check_settings(self, prefix="")
        if not isinstance(self.shards, tuple) or not all(isinstance(t, str) and t for t in self.shards):
            raise ConfigError(f"shards must be a list of non-empty gRPC targets; got {self.shards!r}")
        if (self.shard_client_cert is None) != (self.shard_client_key is None):
            raise ConfigError("mTLS to the shards needs both shard_client_cert and shard_client_key")
        if self.shard_client_cert is not None and self.shard_root_cert is None:
            raise ConfigError("shard_client_cert (mTLS to the shards) needs shard_root_cert as well")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both tls_cert and tls_key (PEM files); got only one")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key as well")
        if self.default_alias is not None and self.indexes and self.default_alias not in self.indexes:
            raise ConfigError(
                f"default_alias {self.default_alias!r} is not one of the indexes {sorted(self.indexes)}"
            )
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise ConfigError(
                f"refusing to listen on non-loopback address {self.host!r} without authentication: set a "
                "token (--token / token_file) or pass --insecure if the network is trusted"
            )

    def resolved_device(self) -> str:
        """The device searches run on: ``device``, with ``auto`` resolved by what torch sees now.

        Raises:
            ConfigError: a CUDA device was asked for and torch sees none.
        """
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} was asked for but torch sees no CUDA GPU")
        return self.device

    def index_devices(self) -> tuple[str, str]:
        """``(device for torch-stage indexes, device for FAISS-stage indexes)``.

        With ``device = "auto"`` FAISS-stage indexes stay on the CPU (their stage is a CPU index) while
        exact ones go to the GPU; an explicit CUDA device applies to both, so a FAISS-stage index is then
        refused at load.
        """
        device = self.resolved_device()
        return device, ("cpu" if self.device == "auto" else device)

    @property
    def resolved_default_alias(self) -> str | None:
        """The default alias: ``default_alias``, else the first configured index alias."""
        return self.default_alias or next(iter(self.indexes), None)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_config(path: str | Path, **overrides: Any) -> ServeConfig:
    """Reads a TOML config file (keys of :class:`ServeConfig`), then applies non-``None`` ``overrides``.

    ``token_file`` / ``admin_token_file`` / ``metrics_token_file`` keys read the token from a file
    (stripped).

    Returns:
        the configuration; relative paths in the file are resolved against the file's folder.

    Raises:
        ConfigError: unreadable file, unknown keys or invalid values.

    Example::

        config = load_config("serve.toml", port=50052)  # a flag overrides the file
    """
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read config file {file}: {err}") from err
    base = file.parent
    token_files = {"token_file", "admin_token_file", "metrics_token_file", "shard_token_file"}
    known = {f.name for f in fields(ServeConfig)} | token_files
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{file}: unknown config keys {unknown}; expected some of {sorted(known)}")
    for key in _PATH_KEYS:
        if key in data:
            data[key] = base / Path(data[key])
    if "shards" in data:
        if not isinstance(data["shards"], list):
            raise ConfigError(f'{file}: shards must be a list of gRPC targets, e.g. ["shard-0:50051"]')
        data["shards"] = tuple(data["shards"])
    if "indexes" in data:
        if not isinstance(data["indexes"], dict):
            raise ConfigError(f'{file}: [indexes] must be a table of alias = "path"')
        data["indexes"] = {str(a): base / Path(p) for a, p in data["indexes"].items()}
    for key, target in (
        ("token_file", "token"),
        ("admin_token_file", "admin_token"),
        ("metrics_token_file", "metrics_token"),
        ("shard_token_file", "shard_token"),
    ):
        if key in data:
            token_path = data.pop(key)
            try:
                data[target] = token_path.read_text().strip()
            except OSError as err:
                raise ConfigError(f"cannot read {key} {token_path}: {err}") from err
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServeConfig(**data)
    except TypeError as err:
        raise ConfigError(f"{file}: {err}") from err


def with_overrides(config: ServeConfig, **overrides: Any) -> ServeConfig:
    """A copy of ``config`` with the non-``None`` ``overrides`` applied."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
