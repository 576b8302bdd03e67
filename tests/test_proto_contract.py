"""The proto contract: a client generated from protos/ alone (no mol code) talks to a real mol-serve,
one server or a front tier over three shard servers, with embeddings queries and with text queries (a
text model bundle of a tiny random BERT).

The Python code is generated into a temporary folder with grpcio-tools' protoc, and the client runs in a
subprocess whose import path holds only that folder and the third-party packages; it asserts that no
``mol_*`` module was imported. Needs mol-serve and grpcio-tools (the nox test session installs both).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="generating a client needs grpcio-tools")
pytest.importorskip("mol_serve", reason="the server side needs mol-serve")

import torch

from mol_core.similarity import ItemSide, MoLSimilarity
from mol_index import MolIndex, SearchParams, ShardedIndex
from mol_index.sharding import read_shard_set

PROTOS = Path(__file__).resolve().parent.parent / "protos"

CLIENT = """
import json, struct, sys
import grpc
from mol.v1 import retrieval_pb2, retrieval_pb2_grpc

target, pq, d, p = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
values = json.loads(sys.stdin.read())
request = retrieval_pb2.RetrieveRequest(top_k=5, algorithm="exact", index_alias="main", exclude_ids=[13])
for emb, gate in zip(values["embeddings"], values["gating"]):
    query = request.queries.add()
    query.embeddings.data = struct.pack(f"<{pq * d}f", *emb)
    query.embeddings.dtype = retrieval_pb2.DTYPE_FLOAT32
    query.embeddings.shape.extend([pq, d])
    query.gating.data = struct.pack(f"<{p}f", *gate)
    query.gating.dtype = retrieval_pb2.DTYPE_FLOAT32
    query.gating.shape.extend([p])
with grpc.insecure_channel(target) as channel:
    stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
    response = stub.Retrieve(request, timeout=60)
    try:
        stub.Retrieve(retrieval_pb2.RetrieveRequest(top_k=5, index_alias="main"), timeout=60)
        refusal = None
    except grpc.RpcError as err:
        refusal = [err.code().name, err.details()]
mol_modules = sorted(m for m in sys.modules if m.startswith("mol_"))
print(json.dumps({
    "ids": [list(r.ids) for r in response.results],
    "scores": [list(r.scores) for r in response.results],
    "version": response.index_version,
    "refusal": refusal,
    "mol_modules": mol_modules,
}))
"""


def generate_client(out: Path) -> None:
    import importlib.resources

    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "mol" / "v1").glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    assert protoc.main(args) == 0
    for folder in (out / "mol", out / "mol" / "v1"):
        (folder / "__init__.py").touch()


def start(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m mol_serve serve ARGS`` on a free loopback port; returns the process and its port."""
    port_file = tmp_path / f"{name}.port.json"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "mol_serve", "serve", "--port", "0", "--port-file", str(port_file)),
            *("--torch-threads", "1", *args),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"mol-serve {name} did not start within 90 s")
        time.sleep(0.1)
    return process, int(json.loads(port_file.read_text())["port"])


@pytest.mark.parametrize("sharded", [False, True], ids=["one-server", "front-tier-over-3-shards"])
def test_client_generated_from_protos_alone_talks_to_the_server(tmp_path: Path, sharded: bool) -> None:
    generated = tmp_path / "generated"
    generated.mkdir()
    generate_client(generated)
    torch.manual_seed(0)
    sim = MoLSimilarity(
        query_input_dim=8, item_input_dim=8, query_components=2, item_components=2, component_dim=8
    ).eval()
    with torch.inference_mode():
        items = sim.item_side(torch.randn(50, 8))
        query = sim.query_side(torch.randn(3, 8))
    ids = torch.arange(50, dtype=torch.int64) + 10
    index_dir = MolIndex.build(sim, ids, ItemSide(items.embeddings.clone(), items.gating.clone())).save(
        tmp_path / "index"
    )
    want_scores, want_ids = MolIndex.load(index_dir).search(
        query, 5, exclude=[[13]] * 3, params=SearchParams(algorithm="exact")
    )

    servers: list[subprocess.Popen[bytes]] = []
    try:
        if sharded:  # a front tier over 3 shard servers, each serving one shard of the same items
            shard_set = ShardedIndex.from_index(MolIndex.load(index_dir), 3).save(tmp_path / "set")
            targets = []
            for shard in read_shard_set(shard_set).shards:
                process, port = start(tmp_path, f"shard{shard.number}", "--index", f"main={shard.path}")
                servers.append(process)
                targets.append(f"--shard=127.0.0.1:{port}")
            process, port = start(tmp_path, "front", "--index", f"main={shard_set}", *targets)
        else:
            process, port = start(tmp_path, "server", "--index", f"main={index_dir}")
        servers.append(process)
        values = {
            "embeddings": query.embeddings.reshape(3, -1).tolist(),
            "gating": query.gating.tolist(),
        }
        # the generated code first, then the installed packages without their .pth files (python -S):
        # editable mol installs are not on the path, and the client must import no mol module
        site = [p for p in sys.path if "site-packages" in p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(generated), *site]))
        run = subprocess.run(
            [sys.executable, "-S", "-c", CLIENT, f"127.0.0.1:{port}", "2", "8", "4"],
            input=json.dumps(values),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            server.wait(timeout=30)
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout)
    assert answer["mol_modules"] == []
    assert answer["ids"] == want_ids.tolist()
    torch.testing.assert_close(torch.tensor(answer["scores"]), want_scores, rtol=1e-5, atol=1e-6)
    if sharded:
        assert answer["version"] == read_shard_set(tmp_path / "set").version
    else:
        assert answer["version"].startswith("exact-")
    assert answer["refusal"][0] == "INVALID_ARGUMENT"
    assert "queries is empty" in answer["refusal"][1]


TEXT_CLIENT = """
import json, sys
import grpc
from mol.v1 import retrieval_pb2, retrieval_pb2_grpc

request = retrieval_pb2.RetrieveRequest(top_k=4, index_alias="main")
for text in json.loads(sys.stdin.read()):
    request.queries.add(text=text)
with grpc.insecure_channel(sys.argv[1]) as channel:
    response = retrieval_pb2_grpc.RetrievalServiceStub(channel).Retrieve(request, timeout=60)
print(json.dumps({
    "ids": [list(r.ids) for r in response.results],
    "mol_modules": sorted(m for m in sys.modules if m.startswith("mol_")),
}))
"""


def test_client_generated_from_protos_alone_sends_text_queries(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="a text bundle is built with mol-train's text extra")
    pytest.importorskip("tokenizers", reason="text bundles need the tokenizers package")
    from mol_train.text import (
        build_text_retriever,
        encode_corpus,
        export_text_bundle,
        load_text_encoder,
        synthetic_beir,
        synthetic_words,
        tiny_text_encoder,
    )

    generated = tmp_path / "generated"
    generated.mkdir()
    generate_client(generated)
    corpus = synthetic_beir(10, 1)
    item_ids = [40 + row for row in range(10)]
    torch.manual_seed(0)
    retriever = build_text_retriever(
        load_text_encoder(tiny_text_encoder(tmp_path / "encoder", synthetic_words(10))), "mol", poolings=2
    ).eval()
    bundle = export_text_bundle(retriever, corpus, tmp_path / "bundle", item_ids=item_ids)
    texts = corpus.queries[:3]
    with torch.no_grad():
        scores = retriever.similarity.score_corpus(
            retriever.query_side(texts), encode_corpus(retriever, corpus.documents())
        )  # (B, N)
    want = [[item_ids[i] for i in row] for row in torch.topk(scores, 4, dim=1).indices.tolist()]
    from mol_index.cli import main as mol_index_main

    index = tmp_path / "index"
    assert mol_index_main(["build", "--bundle", str(bundle), "--kind", "exact", str(index)]) == 0
    process, port = start(tmp_path, "server", "--bundle", str(bundle), "--index", f"main={index}")
    try:
        site = [p for p in sys.path if "site-packages" in p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(generated), *site]))
        run = subprocess.run(
            [sys.executable, "-S", "-c", TEXT_CLIENT, f"127.0.0.1:{port}"],
            input=json.dumps(texts),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout)
    assert answer["mol_modules"] == []
    assert answer["ids"] == want
