"""Text queries served end to end: a tiny random BERT with a MoL head, exported as a text bundle over a
synthetic corpus, indexed with the ``mol-index build`` command, and served by real mol-serve processes
(one server, and a front tier over two shard servers).

The reference is the retriever in the test process: its query side of each text scored against the
corpus it encodes, ranked by torch.topk. The server goes through the exported program, the
``tokenizers`` library and the index instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="text bundles are built with mol-train's text extra")
pytest.importorskip("tokenizers", reason="text bundles need the tokenizers package")

from conftest import ServerProcess, start_server
from mol_core.proto.mol.v1 import retrieval_pb2
from mol_index.cli import main as mol_index_main
from mol_index.sharding import read_shard_set
from mol_serve.client import RetrievalClient
from mol_serve.errors import InvalidRequest
from mol_train.text import (
    build_text_retriever,
    encode_corpus,
    export_text_bundle,
    load_text_encoder,
    synthetic_beir,
    synthetic_words,
    tiny_text_encoder,
)

TOPICS = 20
CORPUS = synthetic_beir(TOPICS, 2)
IDS = [500 + 3 * row for row in range(TOPICS)]
QUERIES = [*CORPUS.queries[:5], "w7 " * 40, "w2 unknown words"]
MAX_CHARS = 200


@dataclass
class TextCluster:
    expected_ids: list[list[int]]
    expected_scores: torch.Tensor  # (B, k)
    server: ServerProcess
    front: ServerProcess
    history_server: ServerProcess  # a history bundle: refuses text queries


@pytest.fixture(scope="module")
def cluster(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextCluster]:
    root = tmp_path_factory.mktemp("text")
    torch.manual_seed(0)
    encoder = load_text_encoder(tiny_text_encoder(root / "encoder", synthetic_words(TOPICS)))
    retriever = build_text_retriever(encoder, "mol", poolings=2, max_query_tokens=32).eval()
    torch.nn.init.normal_(retriever.poolings.attention.weight, std=0.5)  # type: ignore[union-attr]
    bundle = export_text_bundle(retriever, CORPUS, root / "bundle", item_ids=IDS)
    with torch.no_grad():
        scores = retriever.similarity.score_corpus(
            retriever.query_side(QUERIES), encode_corpus(retriever, CORPUS.documents())
        )  # (B, N)
    top = torch.topk(scores, 5, dim=1)
    for name, extra in (("index", ()), ("shards", ("--shards", "2"))):  # the mol-index command itself
        command = ["build", "--bundle", str(bundle), "--kind", "exact", *extra, str(root / name)]
        assert mol_index_main(command) == 0
    servers: list[ServerProcess] = []
    try:
        limits = ("--max-query-chars", str(MAX_CHARS))
        server = start_server(root, "--bundle", str(bundle), "--index", f"main={root / 'index'}", *limits)
        servers.append(server)
        for shard in read_shard_set(root / "shards").shards:
            servers.append(start_server(root, "--index", f"main={shard.path}", name=f"shard{shard.number}"))
        targets = [f"--shard={s.target}" for s in servers[1:]]
        front = start_server(
            root,
            "--bundle",
            str(bundle),
            "--index",
            f"main={root / 'shards'}",
            *limits,
            *targets,
            name="front",
        )
        servers.append(front)
        history = start_server(
            root, "--bundle", str(artifacts["bundle"]), "--index", f"prod={artifacts['index_a']}", name="hist"
        )
        servers.append(history)
        yield TextCluster(
            [[IDS[i] for i in row] for row in top.indices.tolist()], top.values, server, front, history
        )
    finally:
        for process in servers:
            process.stop()


@pytest.mark.parametrize("tier", ["server", "front"])
def test_text_queries_rank_as_the_retriever_does(cluster: TextCluster, tier: str) -> None:
    target = cluster.server.target if tier == "server" else cluster.front.target
    with RetrievalClient(target, timeout=60) as client:
        result = client.retrieve(texts=QUERIES, top_k=5, algorithm="exact")
        excluded = client.retrieve(texts=QUERIES[:2], top_k=5, exclude_ids=[cluster.expected_ids[0][0]])
    assert result.ids == cluster.expected_ids
    torch.testing.assert_close(torch.tensor(result.scores), cluster.expected_scores, rtol=1e-4, atol=1e-4)
    assert excluded.ids[0] == cluster.expected_ids[0][1:] + excluded.ids[0][4:]
    assert cluster.expected_ids[0][0] not in excluded.ids[0] + excluded.ids[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"texts": ["w1", "   "]}, r"query 1: the text is empty or blank"),
        (
            {"texts": ["w1 " * 100]},
            rf"query 0: the text has 300 characters; the server accepts at most {MAX_CHARS}",
        ),
        ({"texts": ["w1"], "exclude_history": True}, "exclude_history needs history queries"),
        ({"histories": [[1, 2]]}, "model bundle encodes text queries, not history queries"),
    ],
)
def test_bad_text_requests_are_refused(cluster: TextCluster, kwargs: dict[str, object], message: str) -> None:
    for target in (cluster.server.target, cluster.front.target):
        with RetrievalClient(target, timeout=60) as client, pytest.raises(InvalidRequest, match=message):
            client.retrieve(top_k=3, **kwargs)


def test_a_history_bundle_refuses_text_and_mixed_requests(cluster: TextCluster) -> None:
    with RetrievalClient(cluster.history_server.target, timeout=60) as client:
        with pytest.raises(InvalidRequest, match="model bundle encodes history queries, not text queries"):
            client.retrieve(texts=["w1"], top_k=3, index_alias="prod")
        request = retrieval_pb2.RetrieveRequest(top_k=3, index_alias="prod")
        request.queries.add(text="w1")
        request.queries.add().history.item_ids.extend([1])
        with pytest.raises(InvalidRequest, match="same kind"):
            client.retrieve_raw(request)
