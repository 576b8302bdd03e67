"""Decoding and validating a ``RetrieveRequest`` into tensors and search arguments.

Every check raises :class:`~mol_serve.errors.InvalidRequest` with a message that names the query, the
field, what was expected and what arrived, so the client can fix the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mol_core.bundle import ModelBundle
from mol_core.proto.mol.v1 import retrieval_pb2
from mol_core.similarity import DotProductSimilarity, Similarity
from mol_index import Algorithm, SearchParams
from mol_serve.config import ALGORITHMS, ServeConfig
from mol_serve.errors import InvalidRequest, echo
from mol_serve.registry import LoadedIndex, needs_gating

__all__ = ["GATING_LIMIT", "RAW_EMBEDDING_LIMIT", "ParsedRequest", "decode_tensor", "parse_request"]

#: Largest absolute value accepted in query gating features (the gating MLP's outputs are O(1) to O(10)).
GATING_LIMIT = 1e4
#: Largest absolute value accepted in query embeddings of a dot product that does not L2-normalise (its
#: scores are not bounded by a normalisation, so a huge query would overflow them to infinity).
RAW_EMBEDDING_LIMIT = 1e4

_DTYPES: dict[int, tuple[str, int]] = {
    retrieval_pb2.DTYPE_FLOAT32: ("float32", 4),
    retrieval_pb2.DTYPE_BFLOAT16: ("bfloat16", 2),
    retrieval_pb2.DTYPE_FLOAT16: ("float16", 2),
}
_INT_PARAMS = (
    "k_prime",
    "k_prime_avg",
    "nprobe",
    "early_nprobe",
    "ef_search",
    "block_size",
    "budget",
    "rounds",
    "beam",
)
_BOOL_PARAMS = ("guarantee_exact", "rerank")


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request, ready for the micro-batcher.

    Attributes:
        kind: ``"embeddings"``, ``"history"`` or ``"text"`` (one kind per request).
        embeddings: ``(B, Pq, d)`` float32 query component embeddings (embeddings requests).
        gating: ``(B, P)`` float32 query gating features, or ``None``.
        histories: B lists of external item ids (history requests).
        timestamps: B lists of times aligned with ``histories``, or ``None``.
        user_ids: B user ids (history requests).
        query_times: B query times, or ``None``.
        exclude: B lists of external ids to leave out.
        texts: B query texts (text requests).
        k: results per query.
        params: search parameters for mol-index.
    """

    kind: str
    embeddings: torch.Tensor | None
    gating: torch.Tensor | None
    histories: list[list[int]]
    timestamps: list[list[int]] | None
    user_ids: list[int]
    query_times: list[int] | None
    exclude: list[list[int]]
    k: int
    params: SearchParams
    texts: list[str] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        """B."""
        return len(self.exclude)

    @property
    def batch_key(self) -> tuple[object, ...]:
        """Requests with equal keys may share one search (same kind, k and parameters)."""
        return (self.kind, self.k, self.params, self.timestamps is None, self.query_times is None)


def decode_tensor(message: retrieval_pb2.Embeddings, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """Packed little-endian bytes -> a float32 tensor of ``shape``, checking dtype, shape and finiteness.

    Raises:
        InvalidRequest: unknown dtype, a shape other than ``shape``, a byte count that does not match, or
            NaN / infinite values.
    """
    if message.dtype not in _DTYPES:
        names = ", ".join(retrieval_pb2.DType.Name(d) for d in _DTYPES)
        raise InvalidRequest(
            f"{what}: dtype must be one of {names}; got {message.dtype} (DTYPE_UNSPECIFIED?)"
        )
    name, size = _DTYPES[message.dtype]
    got_shape = tuple(int(s) for s in message.shape)
    if got_shape != shape:
        raise InvalidRequest(f"{what}: shape must be {list(shape)}; got {list(got_shape)}")
    want_bytes = int(np.prod(shape)) * size
    if len(message.data) != want_bytes:
        raise InvalidRequest(
            f"{what}: {len(message.data)} bytes do not match shape {list(shape)} of {name} "
            f"({want_bytes} bytes expected)"
        )
    if name == "bfloat16":
        halves = np.frombuffer(message.data, dtype="<u2").astype(np.uint32) << 16
        array = halves.view(np.float32)
    else:
        array = np.frombuffer(message.data, dtype="<f4" if name == "float32" else "<f2").astype(np.float32)
    if not np.isfinite(array).all():
        raise InvalidRequest(f"{what}: values must be finite; got NaN or infinity")
    return torch.from_numpy(array.reshape(shape).copy())


def _params(request: retrieval_pb2.RetrieveRequest, config: ServeConfig) -> SearchParams:
    algorithm = request.algorithm or config.default_algorithm
    if algorithm not in ALGORITHMS:
        raise InvalidRequest(f"unknown algorithm {echo(algorithm)}; expected one of {', '.join(ALGORITHMS)}")
    values: dict[str, int | bool] = {"k_prime": config.default_k_prime}
    for key, text in request.algorithm_params.items():
        if key in _BOOL_PARAMS:
            if text.lower() not in ("true", "false"):
                raise InvalidRequest(f"algorithm_params[{key}] must be 'true' or 'false'; got {echo(text)}")
            values[key] = text.lower() == "true"
        elif key in _INT_PARAMS:
            try:
                number = int(text)
            except ValueError:
                number = 0
            if not 1 <= number <= 1_000_000:
                raise InvalidRequest(
                    f"algorithm_params[{key}] must be an integer in [1, 1000000]; got {echo(text)}"
                )
            values[key] = number
        else:
            known = ", ".join((*_INT_PARAMS, *_BOOL_PARAMS))
            raise InvalidRequest(f"unknown algorithm_params key {echo(key)}; expected some of {known}")
    return SearchParams(algorithm=algorithm, kernel=config.kernel, **values)  # type: ignore[arg-type]


def parse_request(
    request: retrieval_pb2.RetrieveRequest,
    loaded: LoadedIndex,
    bundle: ModelBundle | None,
    config: ServeConfig,
) -> ParsedRequest:
    """Validates ``request`` against the resolved index, the bundle and the server limits.

    Raises:
        InvalidRequest: anything malformed (see the module docstring).
    """
    num_queries = len(request.queries)
    if num_queries == 0:
        raise InvalidRequest("queries is empty; send at least one query")
    if num_queries > config.max_queries:
        raise InvalidRequest(
            f"{num_queries} queries in one request; the server accepts at most {config.max_queries}"
        )
    index = loaded.index
    max_k = min(index.num_items, config.max_top_k)
    if not 1 <= request.top_k <= max_k:
        raise InvalidRequest(
            f"top_k must be in [1, {max_k}] (index {loaded.version} holds N = {index.num_items} items, "
            f"server limit {config.max_top_k}); got {request.top_k}"
        )
    kinds = {q.WhichOneof("input") for q in request.queries}
    if None in kinds:
        first = next(i for i, q in enumerate(request.queries) if q.WhichOneof("input") is None)
        raise InvalidRequest(f"query {first} has neither history nor embeddings nor text; set one of them")
    if len(kinds) > 1:
        raise InvalidRequest(
            "all queries of one request must be of the same kind (history, embeddings or text)"
        )
    kind = kinds.pop()
    params = _params(request, config)
    learned = (Algorithm.ADAPTIVE, Algorithm.PQ, Algorithm.HIERARCHICAL)  # each needs its own index kind
    algorithm = Algorithm(params.algorithm)
    if algorithm in learned and index.kind != algorithm.value:
        raise InvalidRequest(
            f"algorithm {algorithm.value!r} needs an index of kind {algorithm.value!r}; "
            f"index {loaded.version} is of kind {loaded.kind!r}"
        )
    shared = list(request.exclude_ids)
    exclude = [shared + list(q.exclude_ids) for q in request.queries]
    sim = index.similarity
    embeddings = gating = None
    histories: list[list[int]] = []
    timestamps: list[list[int]] | None = None
    query_times: list[int] | None = None
    users: list[int] = []
    texts: list[str] = []
    if kind != "embeddings":
        _check_bundle_input(kind, bundle)
    if kind == "text":
        if request.exclude_history:
            raise InvalidRequest("exclude_history needs history queries; send the ids in exclude_ids instead")
        texts = _texts(request, config.max_query_chars)
    elif kind == "embeddings":
        rows, gates = [], []
        shape = (sim.num_query_components, sim.component_dim)
        for i, q in enumerate(request.queries):
            raw = decode_tensor(q.embeddings, shape, f"query {i} embeddings")
            rows.append(_query_components(raw, normalised=_normalises(sim), what=f"query {i} embeddings"))
            if needs_gating(sim):
                if not q.HasField("gating"):
                    raise InvalidRequest(
                        f"query {i}: this index's similarity needs gating features of shape "
                        f"[{sim.num_components}]"
                    )
                gate = decode_tensor(q.gating, (sim.num_components,), f"query {i} gating")
                _check_bound(gate, GATING_LIMIT, f"query {i} gating")
                gates.append(gate)
            elif q.HasField("gating"):
                raise InvalidRequest(f"query {i}: this index's similarity (dot product) takes no gating")
        embeddings = torch.stack(rows)  # (B, Pq, d)
        gating = torch.stack(gates) if gates else None  # (B, P)
        if request.exclude_history:
            raise InvalidRequest("exclude_history needs history queries; send the ids in exclude_ids instead")
    else:
        assert bundle is not None  # _check_bundle_input refused the request otherwise
        vocabulary = _vocabulary(bundle)
        with_times = [len(q.history.timestamps) > 0 for q in request.queries]
        if any(with_times) and not all(with_times):
            raise InvalidRequest("either every history of a request has timestamps or none has")
        timestamps = [] if all(with_times) else None
        query_times = [] if any(q.history.query_time for q in request.queries) else None
        for i, q in enumerate(request.queries):
            items = list(q.history.item_ids)
            if not items:
                raise InvalidRequest(
                    f"query {i} has an empty history; a history query needs at least one item id"
                )
            unknown = [x for x in items if x not in vocabulary]
            if unknown:
                raise InvalidRequest(
                    f"query {i}: unknown item id(s) {unknown[:5]} (not in the model bundle's vocabulary)"
                )
            if timestamps is not None:
                if len(q.history.timestamps) != len(items):
                    raise InvalidRequest(
                        f"query {i}: {len(items)} item ids but {len(q.history.timestamps)} timestamps; "
                        "send one per id"
                    )
                timestamps.append(list(q.history.timestamps))
            if query_times is not None:
                query_times.append(q.history.query_time or (timestamps[i][-1] if timestamps else 0))
            histories.append(items)
            users.append(int(q.history.user_id))
            if request.exclude_history:
                exclude[i].extend(items)
    return ParsedRequest(
        kind,
        embeddings,
        gating,
        histories,
        timestamps,
        users,
        query_times,
        exclude,
        request.top_k,
        params,
        texts,
    )


def _check_bundle_input(kind: str, bundle: ModelBundle | None) -> None:
    """History and text queries need a bundle whose query encoder takes that input."""
    if bundle is None:
        raise InvalidRequest(
            f"this server has no model bundle: send precomputed embeddings, not {kind} queries"
        )
    if bundle.query_input != kind:
        raise InvalidRequest(
            f"this server's model bundle encodes {bundle.query_input} queries, not {kind} queries; send "
            f"{bundle.query_input} queries or precomputed embeddings"
        )


def _texts(request: retrieval_pb2.RetrieveRequest, max_chars: int) -> list[str]:
    """The B query texts, each non-blank and at most ``max_chars`` characters."""
    texts = []
    for i, q in enumerate(request.queries):
        if not q.text.strip():
            raise InvalidRequest(f"query {i}: the text is empty or blank; a text query needs words")
        if len(q.text) > max_chars:
            raise InvalidRequest(
                f"query {i}: the text has {len(q.text)} characters; the server accepts at most {max_chars}"
            )
        texts.append(q.text)
    return texts


def _normalises(similarity: Similarity) -> bool:
    """Whether the similarity L2-normalises every query component (MoL always; a dot product if set)."""
    return not isinstance(similarity, DotProductSimilarity) or similarity.l2_normalize


def _check_bound(values: torch.Tensor, limit: float, what: str) -> None:
    largest = float(values.abs().max()) if values.numel() else 0.0
    if largest > limit:
        raise InvalidRequest(f"{what}: values must be within [-{limit:g}, {limit:g}]; got {largest:.3g}")


def _query_components(raw: torch.Tensor, *, normalised: bool, what: str) -> torch.Tensor:
    """``(Pq, d)`` client components as the similarity scores them: L2-normalised where it normalises
    (scaled by their largest value first, so even 1e38 does not overflow), else bounded."""
    if not normalised:
        _check_bound(raw, RAW_EMBEDDING_LIMIT, what)
        return raw
    scale = raw.abs().amax(dim=-1, keepdim=True)  # (Pq, 1)
    zero = (scale == 0).squeeze(-1).nonzero().flatten().tolist()
    if zero:
        raise InvalidRequest(
            f"{what}: component(s) {zero[:5]} are all zeros; every component needs a non-zero norm "
            "(components are L2-normalised)"
        )
    scaled = raw / scale  # (Pq, d), largest magnitude 1
    normalised_components: torch.Tensor = scaled / scaled.norm(dim=-1, keepdim=True)
    return normalised_components


def _vocabulary(bundle: ModelBundle) -> frozenset[object]:
    cached: frozenset[object] | None = bundle.__dict__.get("_serve_vocabulary")
    if cached is None:
        cached = frozenset(bundle.item_ids)
        object.__setattr__(bundle, "_serve_vocabulary", cached)
    return cached
