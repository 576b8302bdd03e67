"""The front tier: a mol-serve server over 3 shard servers, all real processes on loopback.

Its answers must equal one unsharded server's over the same items (same ids, scores up to float
rounding), for history and embeddings queries, with exclusions and with k larger than any shard; a shard
that does not answer is handled by the documented policy; a new shard set is taken over without failed
requests, and a shard set the shards do not serve is refused.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import ADMIN_TOKEN, TOKEN, ServerProcess, start_server
from mol_core.bundle import load_bundle
from mol_core.similarity import QuerySide
from mol_index import MolIndex, SearchParams, ShardedIndex
from mol_index.sharding import read_shard_set
from mol_serve.client import RetrievalClient
from mol_serve.errors import InvalidRequest, LoadRefused, Unavailable
from mol_serve.front import merge_shard_results

pytest.importorskip("mol_train")

HISTORIES = [[1, 2, 3], [7, 7, 12, 30], [44], [5, 9, 13, 21, 34, 55]]


@dataclass
class Cluster:
    """Three shard servers of set A and the front tiers in front of them."""

    sets: dict[str, Path]
    shards: list[ServerProcess]
    front: ServerProcess
    front_fail: ServerProcess  # policy fail, shard 2 pointing at a closed port
    front_partial: ServerProcess  # policy partial, the same dead shard 2


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(
    artifacts: dict[str, Path], token_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("front")
    sets = {}
    for name, index in (("a", "index_a"), ("b", "index_b"), ("unserved", "index_a")):
        sets[name] = ShardedIndex.from_index(MolIndex.load(artifacts[index]), 3).save(root / f"set-{name}")
    sets["two"] = ShardedIndex.from_index(MolIndex.load(artifacts["index_a"]), 2).save(root / "set-two")
    auth = ("--token-file", str(token_files[0]), "--admin-token-file", str(token_files[1]))
    servers: list[ServerProcess] = []
    try:
        for shard in read_shard_set(sets["a"]).shards:
            servers.append(
                start_server(root, "--index", f"main={shard.path}", *auth, name=f"shard{shard.number}")
            )
        targets = [s.target for s in servers]
        front_args = ("--bundle", str(artifacts["bundle"]), "--index", f"prod={sets['a']}", *auth)
        front_args += ("--shard-token-file", str(token_files[0]))
        front = start_server(root, *front_args, *(f"--shard={t}" for t in targets), name="front")
        servers.append(front)
        dead = [*targets[:2], f"127.0.0.1:{_closed_port()}"]
        fronts = []
        for policy in ("fail", "partial"):
            fronts.append(
                start_server(
                    root,
                    *front_args,
                    *(f"--shard={t}" for t in dead),
                    "--shard-policy",
                    policy,
                    "--shard-timeout-s",
                    "5",
                    name=f"front-{policy}",
                )
            )
            servers.append(fronts[-1])
        yield Cluster(sets, servers[:3], front, fronts[0], fronts[1])
    finally:
        for server in servers:
            server.stop()


def _client(target: str) -> RetrievalClient:
    return RetrievalClient(target, token=TOKEN, admin_token=ADMIN_TOKEN, timeout=60)


def _embedding_queries(artifacts: dict[str, Path]) -> QuerySide:
    return load_bundle(artifacts["bundle"]).encode(HISTORIES)


def _assert_same(got: object, want: object) -> None:
    assert got.ids == want.ids  # type: ignore[attr-defined]
    for got_row, want_row in zip(got.scores, want.scores, strict=True):  # type: ignore[attr-defined]
        torch.testing.assert_close(torch.tensor(got_row), torch.tensor(want_row), rtol=1e-5, atol=1e-6)


def test_merge_keeps_the_best_k_by_score() -> None:
    ids, scores = merge_shard_results([([4, 1], [0.9, 0.2]), ([7, 3, 8], [0.95, 0.5, 0.1]), ([], [])], 4)
    assert ids == [7, 4, 3, 1]
    assert scores == [0.95, 0.9, 0.5, 0.2]
    assert merge_shard_results([([1], [0.5]), ([2], [0.5])], 5) == ([1, 2], [0.5, 0.5])  # ties: shard order


def test_front_tier_answers_exactly_as_one_unsharded_server(
    cluster: Cluster, server: ServerProcess, artifacts: dict[str, Path]
) -> None:
    query = _embedding_queries(artifacts)
    with _client(cluster.front.target) as front, _client(server.target) as whole:
        for k in (1, 10, 60):  # 60 = N: more than any shard holds
            for kwargs in (
                {"histories": HISTORIES, "exclude_history": True, "exclude_ids": [10, 20, 31]},
                {"embeddings": query.embeddings.numpy(), "gating": query.gating.numpy()},
            ):
                want = whole.retrieve(top_k=k, **kwargs)  # fewer than k where exclusions leave fewer
                got = front.retrieve(top_k=k, **kwargs)
                _assert_same(got, want)
                assert got.index_version == read_shard_set(cluster.sets["a"]).version
                assert not got.partial
                assert got.missing_shards == []
        history = front.retrieve(histories=HISTORIES, top_k=5, exclude_history=True)
        for row, items in zip(history.ids, HISTORIES, strict=True):
            assert not set(row) & set(items)
        # RAILS per shard, each certified exact: the merge is the exact top-k
        certified = {"k_prime": 8, "guarantee_exact": True}
        rails = front.retrieve(histories=HISTORIES, top_k=5, algorithm="comb_topk", params=certified)
        _assert_same(rails, whole.retrieve(histories=HISTORIES, top_k=5, algorithm="exact"))
        listed = front.list_indexes()
        assert [(i.kind, i.num_items) for i in listed.indexes] == [("sharded", 60)]
        with pytest.raises(InvalidRequest, match="top_k must be in"):
            front.retrieve(histories=HISTORIES, top_k=61)
        with pytest.raises(InvalidRequest, match="needs an index of kind 'pq'"):
            front.retrieve(histories=HISTORIES, top_k=3, algorithm="pq")
        with pytest.raises(InvalidRequest, match="unknown item id"):
            front.retrieve(histories=[[999_999]], top_k=3)


def test_a_shard_that_does_not_answer_fails_or_gives_a_marked_partial_result(
    cluster: Cluster, artifacts: dict[str, Path]
) -> None:
    message = r"1 of 3 shards did not answer; shard 2 \(127\.0\.0\.1:"
    with _client(cluster.front_fail.target) as front, pytest.raises(Unavailable, match=message):
        front.retrieve(histories=HISTORIES, top_k=5)
    query = _embedding_queries(artifacts)
    shard_set = ShardedIndex.load(cluster.sets["a"])
    answering = ShardedIndex(shard_set.shards[:2])  # what shards 0 and 1 hold
    want_scores, want_ids = answering.search(query, 7, params=SearchParams(algorithm="exact"))
    with _client(cluster.front_partial.target) as front:
        got = front.retrieve(embeddings=query.embeddings.numpy(), gating=query.gating.numpy(), top_k=7)
    assert got.partial
    assert got.missing_shards == [2]
    assert got.ids == want_ids.tolist()
    torch.testing.assert_close(torch.tensor(got.scores), want_scores, rtol=1e-5, atol=1e-6)


def test_a_caller_deadline_shorter_than_the_margin_is_refused_at_once(cluster: Cluster) -> None:
    from mol_serve.errors import DeadlineExceeded

    with _client(cluster.front.target) as front, pytest.raises(DeadlineExceeded):
        front.retrieve(histories=HISTORIES, top_k=5, timeout=0.01)  # 10 ms < the 20 ms margin


def _retrieve_count(server: ServerProcess) -> float:
    """Retrieve calls the server answered OK, from its Prometheus endpoint."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    found = re.search(r'mol_serve_requests_total\{code="OK",method="Retrieve"\} ([0-9.e+]+)', text)
    return float(found.group(1)) if found else 0.0


def test_replicas_of_a_shard_share_its_calls_and_cover_for_each_other(
    cluster: Cluster, token_files: tuple[Path, Path], artifacts: dict[str, Path], tmp_path: Path
) -> None:
    shard0 = read_shard_set(cluster.sets["a"]).shards[0].path
    auth = ("--token-file", str(token_files[0]), "--metrics-port", "0")
    replicas = [
        start_server(tmp_path, "--index", f"main={shard0}", *auth, name=f"replica{r}") for r in range(2)
    ]
    front = None
    try:
        listed = ",".join(r.target for r in replicas)  # gRPC's ipv4: scheme, round_robin over both
        targets = [f"--shard=ipv4:{listed}", *(f"--shard={s.target}" for s in cluster.shards[1:])]
        front = start_server(
            tmp_path,
            *("--bundle", str(artifacts["bundle"]), "--index", f"prod={cluster.sets['a']}"),
            *("--shard-token-file", str(token_files[0]), *targets),
            name="front-replicas",
        )
        with _client(front.target) as client, _client(cluster.front.target) as reference:
            want = reference.retrieve(histories=HISTORIES, top_k=10)
            for _ in range(20):
                _assert_same(client.retrieve(histories=HISTORIES, top_k=10), want)
            counts = [_retrieve_count(r) for r in replicas]
            assert all(count >= 5 for count in counts), counts  # both replicas answered
            replicas[1].stop()
            for _ in range(20):  # the other replica takes every call; none fails
                _assert_same(client.retrieve(histories=HISTORIES, top_k=10), want)
            assert _retrieve_count(replicas[0]) >= counts[0] + 20
    finally:
        for server in [*replicas, *([front] if front else [])]:
            server.stop()


def test_a_new_shard_set_is_taken_over_without_failed_requests(
    cluster: Cluster, artifacts: dict[str, Path]
) -> None:
    set_a, set_b = read_shard_set(cluster.sets["a"]), read_shard_set(cluster.sets["b"])
    with _client(cluster.front.target) as front:
        with pytest.raises(LoadRefused, match="not served by every shard"):
            front.load_index(str(cluster.sets["unserved"]), "prod")
        with pytest.raises(LoadRefused, match="has 2 shards but this front tier has 3"):
            front.load_index(str(cluster.sets["two"]), "prod")
        assert front.retrieve(histories=HISTORIES, top_k=3).index_version == set_a.version
        for shard, server in zip(set_b.shards, cluster.shards, strict=True):
            with _client(server.target) as admin:
                admin.load_index(str(shard.path), "next")  # the shards first, beside set A's versions
        versions: list[str] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def hammer() -> None:
            with _client(cluster.front.target) as caller:
                while not stop.is_set():
                    try:
                        versions.append(caller.retrieve(histories=HISTORIES, top_k=5).index_version)
                    except Exception as err:  # any failure fails the test below
                        failures.append(err)

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            while len(versions) < 5 and not failures:
                stop.wait(0.05)
            flipped = front.load_index(str(cluster.sets["b"]), "prod")
            count = len(versions)
            while len(versions) < count + 5 and not failures:
                stop.wait(0.05)
        finally:
            stop.set()
            worker.join(timeout=60)
        assert failures == []
        assert flipped.previous_version == set_a.version
        assert flipped.index_version == set_b.version
        assert versions[0] == set_a.version
        assert versions[-1] == set_b.version
        query = _embedding_queries(artifacts)
        want_scores, want_ids = ShardedIndex.load(cluster.sets["b"]).search(query, 5)
        got = front.retrieve(histories=HISTORIES, top_k=5)
        assert got.ids == want_ids.tolist()
        torch.testing.assert_close(torch.tensor(got.scores), want_scores, rtol=1e-5, atol=1e-6)
        front.load_index(str(cluster.sets["a"]), "prod")  # back, for whatever runs next
