"""The real server in a subprocess on 127.0.0.1: health, reflection, exact agreement with mol-index,
INVALID_ARGUMENT messages, auth, metrics and admin RPCs."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import ADMIN_TOKEN, TOKEN, ServerProcess
from mol_core.bundle import load_bundle
from mol_core.proto.mol.v1 import retrieval_pb2
from mol_index import MolIndex, SearchParams
from mol_serve import InvalidRequest, RetrievalClient, Unauthenticated
from mol_serve.client import build_request

HISTORIES = [[1, 2, 3], [5, 9, 11, 13, 2, 7, 8, 30, 31, 32, 33], [42]]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> RetrievalClient:
    with RetrievalClient(server.target, token=TOKEN, admin_token=ADMIN_TOKEN, timeout=30) as c:
        yield c


def test_health_serving(client: RetrievalClient) -> None:
    assert client.health() == "SERVING"
    assert client.health("mol.v1.RetrievalService") == "SERVING"


def test_reflection_lists_services(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(
            stub.ServerReflectionInfo(
                iter([request]), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10
            )
        )
    names = {s.name for s in answer.list_services_response.service}
    assert {
        "mol.v1.RetrievalService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_history_results_identical_to_mol_index(client: RetrievalClient, artifacts: dict[str, Path]) -> None:
    bundle = load_bundle(artifacts["bundle"])
    index = MolIndex.load(artifacts["index_a"])
    got = client.retrieve(histories=HISTORIES, top_k=7, exclude_history=True)
    query = bundle.encode(HISTORIES)
    scores, ids = index.search(query, 7, exclude=HISTORIES, params=SearchParams(algorithm="exact"))
    assert got.ids == ids.tolist()
    np.testing.assert_allclose(np.array(got.scores), scores.numpy(), rtol=1e-5, atol=1e-6)
    assert got.index_version == index_version(artifacts["index_a"])
    assert all(not set(row) & set(h) for row, h in zip(got.ids, HISTORIES, strict=True))
    assert got.timings["total_us"] >= got.timings["search_us"] > 0


def test_query_times_reach_the_encoder(client: RetrievalClient, artifacts: dict[str, Path]) -> None:
    bundle = load_bundle(artifacts["bundle"])
    index = MolIndex.load(artifacts["index_a"])
    times = [[100 * (j + 1) for j in range(len(h))] for h in HISTORIES]
    later = [t[-1] + 86_400 * 30 for t in times]  # a month after each history's last item
    got = client.retrieve(histories=HISTORIES, timestamps=times, query_times=later, top_k=7)
    query = bundle.encode(HISTORIES, timestamps=times, query_times=later)
    scores, ids = index.search(query, 7, params=SearchParams(algorithm="exact"))
    assert got.ids == ids.tolist()
    np.testing.assert_allclose(np.array(got.scores), scores.numpy(), rtol=1e-5, atol=1e-6)
    default = bundle.encode(HISTORIES, timestamps=times)  # query time = the last timestamp
    assert not torch.allclose(default.embeddings, query.embeddings)  # the query time matters


def test_embedding_results_identical_to_mol_index(
    client: RetrievalClient, artifacts: dict[str, Path]
) -> None:
    bundle = load_bundle(artifacts["bundle"])
    index = MolIndex.load(artifacts["index_a"])
    query = bundle.encode(HISTORIES)
    cases = [
        ("exact", {"k_prime": 8}),
        ("comb_topk", {"k_prime": 8}),
        # TopKAvg with one candidate per query would return one id; k_prime_avg widens it to 5 results
        ("topk_avg", {"k_prime": 1, "k_prime_avg": 40}),
        ("linearized", {"k_prime": 8, "k_prime_avg": 8, "rounds": 2, "early_nprobe": 2}),
    ]
    for algorithm, params in cases:
        got = client.retrieve(
            embeddings=query.embeddings.numpy(),
            gating=query.gating.numpy(),
            top_k=5,
            exclude_ids=[4, 5],
            algorithm=algorithm,
            params={key: str(value) for key, value in params.items()},
        )
        scores, ids = index.search(
            query, 5, exclude=[[4, 5]] * 3, params=SearchParams(algorithm=algorithm, **params)
        )
        assert got.ids == ids.tolist(), algorithm
        assert all(len(row) == 5 for row in got.ids), algorithm
        np.testing.assert_allclose(np.array(got.scores), scores.numpy(), rtol=1e-5, atol=1e-6)


def index_version(path: Path) -> str:
    from mol_index.artifact import read_artifact

    return str(read_artifact(path).manifest.index_version)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"histories": [[1, 2]], "index_alias": "nope"}, "unknown index alias 'nope'"),
        ({"histories": [[1, 999999]]}, "unknown item id"),
        ({"histories": [[]]}, "empty history"),
        ({"histories": [[1]], "top_k": 0}, "top_k must be in [1, 60]"),
        ({"histories": [[1]], "top_k": 61}, "top_k must be in [1, 60]"),
        ({"histories": [[1]], "algorithm": "magic"}, "unknown algorithm 'magic'"),
        ({"histories": [[1]], "params": {"k_prime": "x"}}, "k_prime"),
        ({"histories": [[1]], "params": {"nope": "1"}}, "unknown algorithm_params key"),
    ],
)
def test_bad_requests_get_invalid_argument(
    client: RetrievalClient, kwargs: dict[str, object], fragment: str
) -> None:
    kwargs = {"top_k": 3, **kwargs}
    with pytest.raises(InvalidRequest, match=None) as info:
        client.retrieve(**kwargs)
    assert info.value.code == "INVALID_ARGUMENT"
    assert fragment in str(info.value)


def test_bad_embedding_bytes_and_dtype(client: RetrievalClient) -> None:
    good = build_request(top_k=3, histories=[[1]])
    request = retrieval_pb2.RetrieveRequest(top_k=3)
    query = request.queries.add()
    query.embeddings.data = b"\x00" * 10
    query.embeddings.dtype = retrieval_pb2.DTYPE_FLOAT32
    with pytest.raises(InvalidRequest, match="shape must be"):
        client.retrieve_raw(request)
    query.embeddings.dtype = retrieval_pb2.DTYPE_UNSPECIFIED
    with pytest.raises(InvalidRequest, match="dtype must be one of"):
        client.retrieve_raw(request)
    assert client.retrieve_raw(good).results[0].ids  # the server is still fine


def test_bytes_not_matching_shape(client: RetrievalClient, artifacts: dict[str, Path]) -> None:
    sim = MolIndex.load(artifacts["index_a"]).similarity
    shape = [sim.num_query_components, sim.component_dim]
    request = retrieval_pb2.RetrieveRequest(top_k=3)
    q = request.queries.add()
    q.embeddings.CopyFrom(
        retrieval_pb2.Embeddings(data=b"\x00" * 12, dtype=retrieval_pb2.DTYPE_FLOAT32, shape=shape)
    )
    with pytest.raises(InvalidRequest, match="bytes do not match shape"):
        client.retrieve_raw(request)


def test_auth_refusals(server: ServerProcess) -> None:
    for token in (None, "wrong"):
        with RetrievalClient(server.target, token=token, timeout=10) as anonymous:
            with pytest.raises(Unauthenticated) as info:
                anonymous.retrieve(histories=[[1]], top_k=1)
            assert info.value.code == "UNAUTHENTICATED"
            assert anonymous.health() == "SERVING"  # open: orchestrators' gRPC probes send no token
    with RetrievalClient(server.target, token=TOKEN, timeout=10) as user:
        assert user.retrieve(histories=[[1]], top_k=1).ids
        with pytest.raises(Unauthenticated) as info:
            user.list_indexes()
        assert info.value.code == "PERMISSION_DENIED"


def test_metrics_endpoint(client: RetrievalClient, server: ServerProcess) -> None:
    client.retrieve(histories=[[1]], top_k=2)
    assert server.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'mol_serve_requests_total{code="OK",method="Retrieve"}' in text
    assert (
        'mol_serve_requests_total{code="INVALID_ARGUMENT",method="Retrieve"}' in text or "INVALID" not in text
    )
    assert "mol_serve_request_latency_seconds_bucket" in text
    assert "mol_serve_batch_queries_count" in text
    assert 'mol_serve_index_info{alias="prod"' in text


def test_list_indexes(client: RetrievalClient, artifacts: dict[str, Path]) -> None:
    listing = client.list_indexes()
    assert listing.default_alias == "prod"
    (info,) = [i for i in listing.indexes if "prod" in i.aliases]
    assert info.num_items == 60
    assert info.kind == "exact"
    assert info.index_version == index_version(artifacts["index_a"])


def test_reference_is_not_trivial(artifacts: dict[str, Path]) -> None:
    """Guards the identity tests: the two index versions really rank differently."""
    bundle = load_bundle(artifacts["bundle"])
    query = bundle.encode(HISTORIES)
    a = MolIndex.load(artifacts["index_a"]).search(query, 5, params=SearchParams(algorithm="exact"))[0]
    b = MolIndex.load(artifacts["index_b"]).search(query, 5, params=SearchParams(algorithm="exact"))[0]
    assert not torch.allclose(a, b)
