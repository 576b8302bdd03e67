"""Property-based fuzzing: random (often malformed) requests never crash the real server.

Every answer is OK or INVALID_ARGUMENT, OK answers are well formed, and the server stays healthy.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOKEN, ServerProcess
from mol_core.proto.mol.v1 import retrieval_pb2, retrieval_pb2_grpc
from mol_index import MolIndex

ids = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(min_value=0, max_value=70)
embeddings = st.builds(
    retrieval_pb2.Embeddings,
    data=st.binary(max_size=300),
    dtype=st.integers(min_value=0, max_value=5),
    shape=st.lists(st.integers(min_value=0, max_value=2**32 - 1) | st.integers(0, 20), max_size=3),
)
history = st.builds(
    retrieval_pb2.History,
    item_ids=st.lists(ids, max_size=12),
    timestamps=st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=12),
    user_id=st.integers(min_value=-5, max_value=5),
)


@st.composite
def queries(draw: st.DrawFn) -> retrieval_pb2.Query:
    query = retrieval_pb2.Query(exclude_ids=draw(st.lists(ids, max_size=4)))
    choice = draw(st.sampled_from(["history", "embeddings", "none"]))
    if choice == "history":
        query.history.CopyFrom(draw(history))
    elif choice == "embeddings":
        query.embeddings.CopyFrom(draw(embeddings))
        if draw(st.booleans()):
            query.gating.CopyFrom(draw(embeddings))
    return query


requests = st.builds(
    retrieval_pb2.RetrieveRequest,
    queries=st.lists(queries(), max_size=4),
    top_k=st.integers(min_value=0, max_value=2**32 - 1) | st.integers(0, 70),
    exclude_ids=st.lists(ids, max_size=4),
    exclude_history=st.booleans(),
    algorithm=st.sampled_from(["", "exact", "comb_topk", "topk_avg", "topk_per_embd", "linearized", "bogus"]),
    algorithm_params=st.dictionaries(
        st.sampled_from(
            ["k_prime", "k_prime_avg", "nprobe", "early_nprobe", "guarantee_exact", "rerank", "zzz"]
        ),
        st.sampled_from(["1", "64", "-3", "x", "true"]),
        max_size=2,
    ),
    index_alias=st.sampled_from(["", "prod", "missing"]),
)


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> retrieval_pb2_grpc.RetrievalServiceStub:
    with grpc.insecure_channel(server.target) as channel:
        yield retrieval_pb2_grpc.RetrievalServiceStub(channel)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(request=requests)
def test_random_requests_never_crash_the_server(
    stub: retrieval_pb2_grpc.RetrievalServiceStub, request: retrieval_pb2.RetrieveRequest
) -> None:
    metadata = [("authorization", f"Bearer {TOKEN}")]
    try:
        response = stub.Retrieve(request, metadata=metadata, timeout=20)
    except grpc.RpcError as err:
        code, details = err.code(), err.details()
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert details
        return
    assert len(response.results) == len(request.queries)
    for result in response.results:
        assert len(result.ids) == len(result.scores) <= request.top_k
        assert all(a >= b for a, b in zip(result.scores, result.scores[1:], strict=False))


def test_server_still_healthy_after_fuzzing(
    stub: retrieval_pb2_grpc.RetrievalServiceStub, server: ServerProcess
) -> None:
    assert server.process.poll() is None
    request = retrieval_pb2.RetrieveRequest(
        top_k=2, queries=[retrieval_pb2.Query(history=retrieval_pb2.History(item_ids=[1]))]
    )
    assert stub.Retrieve(request, metadata=[("authorization", f"Bearer {TOKEN}")], timeout=20).results[0].ids


def _fuzz_module() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mol_serve_fuzz.py"
    spec = importlib.util.spec_from_file_location("bench_mol_serve_fuzz", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_seeded_corpus_of_hostile_requests_and_raw_bytes(
    server: ServerProcess, artifacts: dict[str, Path]
) -> None:
    """600 cases of the fuzz benchmark's corpus against the real server: no status but OK,
    INVALID_ARGUMENT or (without the token) UNAUTHENTICATED; no OK with a non-finite score or missing
    exact results; the process alive; its RSS growth bounded."""
    fuzzing = _fuzz_module()
    index = MolIndex.load(artifacts["index_a"])
    sim = index.similarity
    shapes = ((sim.num_query_components, sim.component_dim), sim.num_components)
    ids = frozenset(int(x) for x in index.item_ids.tolist())
    cases = list(fuzzing.fuzz_cases(7, 600, shapes, len(ids)))
    result = fuzzing.fuzz(server.target, server.process.pid, cases, ids, token=TOKEN, rss_limit_mb=64.0)
    assert result["violation_count"] == 0, result["violations"]
    assert server.process.poll() is None
    assert result["counts"].get("request OK", 0) > 30  # the corpus reaches the search, not only refusals
