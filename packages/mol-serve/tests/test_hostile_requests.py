"""Hostile requests against the real server: never OK with a NaN score or missing results, and error
messages of bounded size.

Huge, unnormalised or degenerate components are normalised as the similarity requires (MoL scores are
then bounded by ``1 / temperature``) or refused with INVALID_ARGUMENT naming the field. Client strings
echoed in errors are cut, so a huge alias still gets its INVALID_ARGUMENT (not a transport error).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ADMIN_TOKEN, TOKEN, ServerProcess
from mol_core.bundle import load_bundle
from mol_index import MolIndex, SearchParams
from mol_serve import InvalidRequest, RetrievalClient

ALGORITHMS = ["exact", "comb_topk", "topk_avg", "topk_per_embd", "linearized"]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> RetrievalClient:
    with RetrievalClient(server.target, token=TOKEN, admin_token=ADMIN_TOKEN, timeout=30) as c:
        yield c


def _query(artifacts: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    query = load_bundle(artifacts["bundle"]).encode([[1, 2, 3], [5, 9]])
    return query.embeddings.numpy(), query.gating.numpy()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_huge_and_unnormalised_embeddings_give_full_finite_results(
    client: RetrievalClient, artifacts: dict[str, Path], algorithm: str
) -> None:
    embeddings, gating = _query(artifacts)
    index = MolIndex.load(artifacts["index_a"])
    bound = 1.0 / index.similarity.temperature
    huge = np.sign(embeddings) * 1e38  # overflows a plain norm to infinity
    noise = np.random.default_rng(0).standard_normal(embeddings.shape).astype(np.float32) * 30
    for hostile in (huge, noise):
        got = client.retrieve(
            embeddings=np.concatenate([hostile, embeddings]),  # a normal query in the same batch
            gating=np.concatenate([gating, gating]),
            top_k=10,
            algorithm=algorithm,
            params={"k_prime": "16"},
        )
        assert [len(row) for row in got.ids] == [10] * 4, algorithm
        scores = [x for row in got.scores for x in row]
        assert all(math.isfinite(x) and abs(x) <= bound + 1e-3 for x in scores), algorithm
    if algorithm == "exact":  # normalised by the server: the results of the normalised components
        normalised = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
        scaled = client.retrieve(embeddings=normalised * 1e30, gating=gating, top_k=10, algorithm=algorithm)
        _, want = index.search(
            torch.from_numpy(normalised), 10, gating=torch.from_numpy(gating), params=SearchParams()
        )
        assert scaled.ids == want.tolist()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("zero_component", "query 0 embeddings: component(s) [1] are all zeros"),
        ("huge_gating", "query 1 gating: values must be within [-10000, 10000]"),
    ],
)
def test_degenerate_inputs_get_invalid_argument(
    client: RetrievalClient, artifacts: dict[str, Path], change: str, fragment: str
) -> None:
    embeddings, gating = _query(artifacts)
    if change == "zero_component":
        embeddings[0, 1] = 0.0
    else:
        gating[1, 0] = 1e30
    with pytest.raises(InvalidRequest) as info:
        client.retrieve(embeddings=embeddings, gating=gating, top_k=5)
    assert info.value.code == "INVALID_ARGUMENT"
    assert fragment in str(info.value)


def test_the_last_guard_refuses_non_finite_scores_and_missing_exact_results() -> None:
    """The service's final check, fed outcomes the validation should make impossible."""
    from mol_serve.errors import ServeError
    from mol_serve.service import check_outcome

    parsed = SimpleNamespace(params=SearchParams(algorithm="exact"), k=3, exclude=[[7, 7, 8]])
    check_outcome([[1, 2, 3]], [[3.0, 2.0, 1.0]], parsed, 10, "v1")  # type: ignore[arg-type]
    check_outcome([[1, 2]], [[3.0, 2.0]], parsed, 4, "v1")  # type: ignore[arg-type]  # 4 - 2 excluded
    with pytest.raises(ServeError, match="non-finite score") as info:
        check_outcome([[1, 2, 3]], [[3.0, float("nan"), 1.0]], parsed, 10, "v1")  # type: ignore[arg-type]
    assert info.value.code == "INTERNAL"
    with pytest.raises(ServeError, match="2 exact results where 3 were asked"):
        check_outcome([[1, 2]], [[3.0, 2.0]], parsed, 10, "v1")  # type: ignore[arg-type]
    approximate = SimpleNamespace(params=SearchParams(algorithm="comb_topk"), k=3, exclude=[[]])
    check_outcome([[1, 2]], [[3.0, 2.0]], approximate, 10, "v1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"index_alias": "a" * 20_000}, "unknown index alias 'aaaa"),
        ({"algorithm": "b" * 20_000}, "unknown algorithm 'bbbb"),
        ({"params": {"k_prime": "9" * 20_000}}, "must be an integer in [1, 1000000]"),
        ({"params": {"c" * 20_000: "1"}}, "unknown algorithm_params key 'cccc"),
    ],
)
def test_huge_client_strings_are_cut_in_error_messages(
    client: RetrievalClient, kwargs: dict[str, object], fragment: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        client.retrieve(histories=[[1, 2]], top_k=3, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert info.value.code == "INVALID_ARGUMENT"
    assert fragment in message
    assert "(20000 characters)" in message
    assert len(message) < 400


def test_echo_and_bounded_message_cut_and_say_how_long() -> None:
    from mol_serve.errors import MAX_ECHO_CHARS, MAX_MESSAGE_CHARS, bounded_message, echo

    assert echo("prod") == "'prod'"
    cut = echo("x" * 1000)
    assert cut == f"{'x' * MAX_ECHO_CHARS!r}... (1000 characters)"
    assert bounded_message("short") == "short"
    long = bounded_message("y" * 5000)
    assert long.startswith("y" * MAX_MESSAGE_CHARS)
    assert long.endswith("(message cut from 5000 characters)")


GARBAGE = [b"\xff" * 10, b"\x0a\xff", b"\x12\x05abc", b"\x08" + b"\x80" * 11]


@pytest.mark.parametrize("method", ["Retrieve", "ListIndexes"])
def test_undecodable_bytes_get_unauthenticated_without_token_and_invalid_argument_with_it(
    server: ServerProcess, method: str
) -> None:
    """Authentication before decoding; with the right token, INVALID_ARGUMENT with a plain message; and
    the server log gets no traceback and at most a line or two for many such calls."""
    import grpc

    log_before = server.log.read_text(errors="replace")
    token = ADMIN_TOKEN if method == "ListIndexes" else TOKEN
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary(f"/mol.v1.RetrievalService/{method}")  # raw bytes both ways
        for _ in range(10):
            for garbage in GARBAGE:
                with pytest.raises(grpc.RpcError) as refused:
                    call(garbage, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as invalid:
                    call(garbage, metadata=[("authorization", f"Bearer {token}")], timeout=10)
                assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                details = invalid.value.details() or ""
                want = "the request bytes are not a valid request message for /mol.v1.RetrievalService/"
                assert details == want + method
    added = server.log.read_text(errors="replace")[len(log_before) :]
    assert "Traceback" not in added
    assert len(added.splitlines()) <= 2, added


def test_metrics_endpoint_with_its_own_token_and_address_answers_only_metrics(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    import urllib.error
    import urllib.request

    from conftest import start_server

    (tmp_path / "metrics-token").write_text("scrape-secret\n")
    proc = start_server(
        tmp_path,
        "--index",
        f"prod={artifacts['index_a']}",
        "--metrics-port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-token-file",
        str(tmp_path / "metrics-token"),
        name="metrics",
    )
    base = f"http://127.0.0.1:{proc.metrics_port}"

    def status(path: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        request = urllib.request.Request(base + path, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    try:
        assert status("/metrics")[0] == 401
        assert status("/metrics", "wrong")[0] == 401
        code, body = status("/metrics", "scrape-secret")
        assert code == 200
        assert "mol_serve_requests" in body
        for path in ("/", "/metrics/x", "/anything"):
            assert status(path, "scrape-secret")[0] == 404
        assert status("/metrics", "scrape-secret", method="POST")[0] == 404
    finally:
        proc.stop()
