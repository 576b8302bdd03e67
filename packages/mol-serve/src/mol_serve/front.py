"""The front tier: one endpoint over a sharded index whose S shards are served by shard servers.

A front tier is a mol-serve server started with shard targets (``ServeConfig.shards``). Its "indexes" are
shard-set folders (``mol-index build --shards S``), of which it reads the manifests only. For each
Retrieve call it

1. validates the request as any server does (:func:`mol_serve.codec.parse_request`);
2. computes the query side once: history and text queries are encoded here with the model bundle; embeddings
   queries are forwarded as the caller packed them;
3. sends every shard server a Retrieve for the same queries, naming the shard's own ``index_version``
   (so a request never mixes two shard sets during a reload), asking for its top ``min(k, N_s)`` and
   passing each query's excluded ids that live on that shard (``mol_index.shard_of``), all in parallel,
   with the caller's deadline less ``shard_margin_ms``;
4. merges the shards' top-k by score: shards hold disjoint items and an item's score does not depend on
   its shard, so the merged exact top-k is the unsharded one.

When a shard fails or misses the deadline, ``shard_policy`` decides: ``fail`` answers UNAVAILABLE naming
the shard; ``partial`` answers with the shards that did answer and sets ``partial`` and
``missing_shards`` in the response (UNAVAILABLE when none answered). A shard's INVALID_ARGUMENT is passed
on as the caller's error. Replicas of a shard sit behind one target (a DNS name or an address list),
balanced round-robin by the gRPC client, which retries UNAVAILABLE for Retrieve (an idempotent call).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc import aio

from mol_core.bundle import ModelBundle
from mol_core.errors import ArtifactError, ConfigError
from mol_core.proto.mol.v1 import retrieval_pb2, retrieval_pb2_grpc
from mol_core.similarity import Similarity, similarity_from_config
from mol_index.sharding import ShardSetInfo, read_shard_set, shard_of
from mol_serve.batcher import MicroBatcher
from mol_serve.codec import ParsedRequest, parse_request
from mol_serve.config import ServeConfig
from mol_serve.errors import DeadlineExceeded, InvalidRequest, LoadRefused, Unavailable
from mol_serve.metrics import ServerMetrics
from mol_serve.registry import IndexRegistry, LoadedIndex, check_fits_bundle, needs_gating
from mol_serve.service import Context, RetrievalServicer, check_outcome

__all__ = ["FrontServicer", "ShardSetIndex", "load_shard_set", "merge_shard_results", "shard_service_config"]

logger = logging.getLogger(__name__)

#: Status codes of a shard that mean the request itself is wrong: passed on to the caller as they are.
_CALLER_ERRORS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)


def shard_service_config() -> str:
    """The gRPC service config of the channels to the shards: round-robin over a target's addresses (the
    replicas of one shard) and up to 3 attempts of Retrieve on UNAVAILABLE (Retrieve is idempotent)."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": "mol.v1.RetrievalService", "method": "Retrieve"}],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.01s",
                        "maxBackoff": "0.1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


@dataclass(frozen=True)
class ShardSetIndex:
    """What a front tier holds of a shard set, in place of an index in its registry.

    Attributes:
        info: the shard set's manifests (:func:`mol_index.sharding.read_shard_set`).
        similarity: the shards' similarity, rebuilt from the manifest without weights: only its shapes
            and kind are used (to validate requests).
        kind: always ``"sharded"``.
    """

    info: ShardSetInfo
    similarity: Similarity
    kind: str = "sharded"

    @property
    def num_items(self) -> int:
        """N, the items of all shards."""
        return self.info.num_items


def load_shard_set(path: Path, bundle: ModelBundle | None, num_targets: int) -> LoadedIndex:
    """Reads a shard set's manifests for a front tier with ``num_targets`` shard targets.

    Raises:
        LoadRefused: the folder is not a readable shard set, its shard count is not ``num_targets``, or
            its similarity does not fit the bundle.
    """
    start = time.perf_counter()
    try:
        info = read_shard_set(path)
        similarity = similarity_from_config(info.similarity)
    except (ArtifactError, ConfigError, OSError) as err:
        raise LoadRefused(f"cannot load shard set {path}: {err}") from err
    if len(info.shards) != num_targets:
        raise LoadRefused(
            f"shard set {path} has {len(info.shards)} shards but this front tier has {num_targets} shard "
            "targets (--shard); start it with one target per shard, in shard order"
        )
    check_fits_bundle(similarity, bundle, f"shard set {path}")
    load_us = int((time.perf_counter() - start) * 1e6)
    return LoadedIndex(info.version, Path(path), ShardSetIndex(info, similarity), "sharded", load_us)  # type: ignore[arg-type]


def merge_shard_results(
    results: Sequence[tuple[Sequence[int], Sequence[float]]], k: int
) -> tuple[list[int], list[float]]:
    """The best ``k`` of one query's shard results, by score, ties in shard then rank order.

    Args:
        results: per answering shard, ``(ids, scores)`` best first.
        k: results wanted.

    Returns:
        ``(ids, scores)``, at most ``k`` of each, scores non-increasing.
    """
    pairs = [(score, item) for ids, scores in results for item, score in zip(ids, scores, strict=True)]
    pairs.sort(key=lambda pair: -pair[0])  # stable: equal scores keep shard order
    best = pairs[:k]
    return [item for _, item in best], [score for score, _ in best]


class _ShardChannels:
    """One gRPC channel per shard target, with the shard service config, credentials and token."""

    def __init__(self, config: ServeConfig) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.service_config", shard_service_config()),
            ("grpc.enable_retries", 1),
        ]
        credentials = None
        if config.shard_root_cert is not None:
            try:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=config.shard_root_cert.read_bytes(),
                    private_key=config.shard_client_key.read_bytes() if config.shard_client_key else None,
                    certificate_chain=(
                        config.shard_client_cert.read_bytes() if config.shard_client_cert else None
                    ),
                )
            except OSError as err:
                raise ArtifactError(f"cannot read the shard TLS files: {err}") from err
        self.targets = config.shards
        self.channels = [
            aio.insecure_channel(t, options=options)
            if credentials is None
            else aio.secure_channel(t, credentials, options=options)
            for t in self.targets
        ]
        self.stubs = [retrieval_pb2_grpc.RetrievalServiceStub(c) for c in self.channels]
        token = config.shard_token
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def retrieve(
        self, shard: int, request: retrieval_pb2.RetrieveRequest, timeout: float
    ) -> retrieval_pb2.RetrieveResponse:
        """One Retrieve on shard ``shard``; raises ``grpc.aio.AioRpcError`` when it fails."""
        response: retrieval_pb2.RetrieveResponse = await self.stubs[shard].Retrieve(
            request, timeout=timeout, metadata=self.metadata
        )
        return response

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class FrontServicer(RetrievalServicer):
    """Answers Retrieve by fanning out to the shard servers of ``ServeConfig.shards`` and merging.

    ListIndexes and UnloadIndex behave as on any server (over shard sets); LoadIndex reads a shard-set
    folder and, before flipping the alias, checks that every shard server serves its shard's version.
    """

    def __init__(
        self,
        config: ServeConfig,
        registry: IndexRegistry,
        batcher: MicroBatcher,
        bundle: ModelBundle | None,
        metrics: ServerMetrics,
    ) -> None:
        super().__init__(config, registry, batcher, bundle, metrics)
        self.shard_channels = _ShardChannels(config)
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mol-serve-encode")

    async def _retrieve(
        self, request: retrieval_pb2.RetrieveRequest, context: Context
    ) -> retrieval_pb2.RetrieveResponse:
        start = time.perf_counter()
        with self._admitted():
            loaded = self._resolve(request)
            index: ShardSetIndex = loaded.index  # type: ignore[assignment]
            parsed = parse_request(request, loaded, self.bundle, self.config)
            encode_start = time.perf_counter()
            queries = await self._query_messages(request, parsed)
            encode_us = int((time.perf_counter() - encode_start) * 1e6) if parsed.kind != "embeddings" else 0
            timeout = self._shard_timeout(context.time_remaining())
            search_start = time.perf_counter()
            answers = await self._fan_out(request, parsed, index, queries, timeout)
            search_us = int((time.perf_counter() - search_start) * 1e6)
        missing = [shard for shard, answer in enumerate(answers) if answer is None]
        response = retrieval_pb2.RetrieveResponse(index_version=loaded.version)
        merged_ids, merged_scores = [], []
        for row in range(parsed.batch_size):
            parts = [(a.results[row].ids, a.results[row].scores) for a in answers if a is not None]
            ids, scores = merge_shard_results(parts, parsed.k)
            merged_ids.append(ids)
            merged_scores.append(scores)
        if missing:
            response.partial = True
            response.missing_shards.extend(missing)
        else:
            check_outcome(merged_ids, merged_scores, parsed, index.num_items, loaded.version)
        for ids, scores in zip(merged_ids, merged_scores, strict=True):
            response.results.add(ids=ids, scores=scores)
        response.timings.encode_us, response.timings.search_us = encode_us, search_us
        response.timings.total_us = int((time.perf_counter() - start) * 1e6)
        return response

    def _shard_timeout(self, remaining: float | None) -> float:
        """A shard call's deadline in seconds: ``shard_timeout_s``, or less when the caller's is nearer."""
        timeout = self.config.shard_timeout_s
        if remaining is not None:
            timeout = min(timeout, remaining - self.config.shard_margin_ms / 1000)
        if timeout <= 0:
            raise DeadlineExceeded("the caller's deadline leaves no time to ask the shards")
        return timeout

    async def _query_messages(
        self, request: retrieval_pb2.RetrieveRequest, parsed: ParsedRequest
    ) -> list[retrieval_pb2.Query]:
        """The queries as every shard receives them (without exclusions): embeddings queries as sent,
        history and text queries encoded here once."""
        if parsed.kind == "embeddings":
            forwarded = []
            for q in request.queries:
                message = retrieval_pb2.Query(embeddings=q.embeddings)
                if q.HasField("gating"):
                    message.gating.CopyFrom(q.gating)
                forwarded.append(message)
            return forwarded
        bundle = self.bundle
        assert bundle is not None  # parse_request refuses history and text queries without a bundle
        query = await asyncio.get_running_loop().run_in_executor(
            self._encoder,
            lambda: (
                bundle.encode_texts(parsed.texts)
                if parsed.kind == "text"
                else bundle.encode(
                    parsed.histories,
                    timestamps=parsed.timestamps,
                    user_ids=parsed.user_ids,
                    query_times=parsed.query_times,
                )
            ),
        )
        embeddings = query.embeddings.detach().float().contiguous().numpy()  # (B, Pq, d)
        gating = None if query.gating is None else query.gating.detach().float().contiguous().numpy()
        out = []
        for row in range(parsed.batch_size):
            message = retrieval_pb2.Query(embeddings=_pack(embeddings[row]))
            if gating is not None:
                message.gating.CopyFrom(_pack(gating[row]))
            out.append(message)
        return out

    async def _fan_out(
        self,
        request: retrieval_pb2.RetrieveRequest,
        parsed: ParsedRequest,
        index: ShardSetIndex,
        queries: list[retrieval_pb2.Query],
        timeout: float,
    ) -> list[retrieval_pb2.RetrieveResponse | None]:
        """Every shard's answer, ``None`` for a shard that failed (under the ``partial`` policy)."""
        shards = index.info.shards
        excluded = _exclusions_by_shard(parsed.exclude, len(shards))  # [shard][query] -> ids
        params = dict(request.algorithm_params)
        params.setdefault("k_prime", str(self.config.default_k_prime))  # this server's default, not theirs
        calls = []
        for info in shards:
            shard_request = retrieval_pb2.RetrieveRequest(
                index_version=info.index_version,
                top_k=min(parsed.k, info.num_items),
                algorithm=parsed.params.algorithm,
                algorithm_params=params,
            )
            for row, query in enumerate(queries):
                message = shard_request.queries.add()
                message.CopyFrom(query)
                message.exclude_ids.extend(excluded[info.number][row])
            calls.append(self._call_shard(info.number, shard_request, timeout))
        outcomes = await asyncio.gather(*calls)
        answers: list[retrieval_pb2.RetrieveResponse | None] = []
        failures: list[tuple[int, grpc.aio.AioRpcError]] = []
        for shard, outcome in enumerate(outcomes):
            if isinstance(outcome, grpc.aio.AioRpcError):
                failures.append((shard, outcome))
                answers.append(None)
            else:
                answers.append(outcome)
        for shard, err in failures:
            if err.code() in _CALLER_ERRORS:
                raise InvalidRequest(f"shard {shard} refused the request: {err.details()}")
        if failures and (self.config.shard_policy == "fail" or len(failures) == len(shards)):
            shard, err = failures[0]
            raise Unavailable(
                f"{len(failures)} of {len(shards)} shards did not answer; shard {shard} "
                f"({self.shard_channels.targets[shard]}): {err.code().name}: {err.details()}"
            )
        return answers

    async def _call_shard(
        self, shard: int, request: retrieval_pb2.RetrieveRequest, timeout: float
    ) -> retrieval_pb2.RetrieveResponse | grpc.aio.AioRpcError:
        start = time.perf_counter()
        try:
            return await self.shard_channels.retrieve(shard, request, timeout)
        except grpc.aio.AioRpcError as err:
            self.metrics.shard_failures.labels(shard=str(shard), code=err.code().name).inc()
            logger.warning("shard %d (%s) failed: %s", shard, self.shard_channels.targets[shard], err.code())
            return err
        finally:
            self.metrics.shard_latency.labels(shard=str(shard)).observe(time.perf_counter() - start)

    async def _load(self, path: Path) -> LoadedIndex:
        """Reads the shard set at ``path`` and checks that every shard server serves its shard's version.

        Raises:
            LoadRefused: as :func:`load_shard_set`, or a shard server that does not answer for its version
                (load it there first: ``mol-serve load SHARD_FOLDER --alias ...`` on each shard server).
        """
        loaded = load_shard_set(path, self.bundle, len(self.config.shards))
        index: ShardSetIndex = loaded.index  # type: ignore[assignment]
        probes = [self._probe(s.number, s.index_version, index.similarity) for s in index.info.shards]
        problems = [problem for problem in await asyncio.gather(*probes) if problem]
        if problems:
            raise LoadRefused(f"shard set {path} is not served by every shard: {'; '.join(problems)}")
        return loaded

    async def _probe(self, shard: int, version: str, similarity: Similarity) -> str:
        """ "" when shard ``shard`` answers a one-query exact search on ``version``, else what went wrong."""
        generator = torch.Generator().manual_seed(0)
        shape = (similarity.num_query_components, similarity.component_dim)
        query = retrieval_pb2.Query(embeddings=_pack(torch.randn(shape, generator=generator).numpy()))
        if needs_gating(similarity):
            query.gating.CopyFrom(_pack(torch.randn(similarity.num_components, generator=generator).numpy()))
        request = retrieval_pb2.RetrieveRequest(
            queries=[query], index_version=version, top_k=1, algorithm="exact"
        )
        try:
            await self.shard_channels.retrieve(shard, request, self.config.shard_timeout_s)
        except grpc.aio.AioRpcError as err:
            target = self.shard_channels.targets[shard]
            return f"shard {shard} ({target}) on version {version}: {err.code().name}: {err.details()}"
        return ""

    async def close(self) -> None:
        await self.shard_channels.close()
        self._encoder.shutdown(wait=False)


def _pack(array: Any) -> retrieval_pb2.Embeddings:
    """A float32 array as ``Embeddings`` (little-endian, C order)."""
    import numpy as np

    values = np.ascontiguousarray(array, dtype="<f4")
    return retrieval_pb2.Embeddings(
        data=values.tobytes(), dtype=retrieval_pb2.DTYPE_FLOAT32, shape=list(values.shape)
    )


def _exclusions_by_shard(exclude: list[list[int]], num_shards: int) -> list[list[list[int]]]:
    """``[shard][query]`` the excluded ids of each query that live on each shard (ids of no shard's items
    go to the shard the rule names, where they exclude nothing)."""
    out: list[list[list[int]]] = [[[] for _ in exclude] for _ in range(num_shards)]
    flat = [item for row in exclude for item in row]
    if not flat:
        return out
    owners = shard_of(torch.tensor(flat, dtype=torch.int64), num_shards).tolist()
    position = 0
    for row, items in enumerate(exclude):
        for item in items:
            out[owners[position]][row].append(item)
            position += 1
    return out
