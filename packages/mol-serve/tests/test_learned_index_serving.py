"""Learned indexes (adaptive, pq, hierarchical) served by a real server process: results equal the
in-process search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import start_server
from mol_core.bundle import load_bundle
from mol_index import MolIndex, SearchParams, build_adaptive, build_hierarchical, build_pq
from mol_serve import InvalidRequest, RetrievalClient

HISTORIES = [[1, 2, 3], [5, 9, 11, 13], [42, 7]]


def test_adaptive_index_is_served(artifacts: dict[str, Path], tmp_path: Path) -> None:
    bundle = load_bundle(artifacts["bundle"])
    ids = bundle.item_ids
    train = [[ids[(u * 7 + j) % len(ids)] for j in range(5)] for u in range(40)]
    with torch.inference_mode():
        train_queries = bundle.encode(train)
    index = build_adaptive(MolIndex.load(artifacts["index_a"]), train_queries, per_query=10, iterations=3)
    path = index.save(tmp_path / "adaptive")
    loaded = MolIndex.load(path)
    with torch.inference_mode():
        query = bundle.encode(HISTORIES)
    params = SearchParams(algorithm="adaptive", budget=20, rounds=2)
    want_scores, want_ids = loaded.search(query, 5, exclude=HISTORIES, params=params)
    server = start_server(
        tmp_path,
        "--bundle",
        str(artifacts["bundle"]),
        "--index",
        f"adaptive={path}",
        "--index",
        f"exact={artifacts['index_a']}",
    )
    try:
        with RetrievalClient(server.target, timeout=60) as client:
            got = client.retrieve(
                histories=HISTORIES,
                top_k=5,
                exclude_history=True,
                index_alias="adaptive",
                algorithm="adaptive",
                params={"budget": 20, "rounds": 2},
            )
            with pytest.raises(InvalidRequest, match="'adaptive' needs an index of kind 'adaptive'"):
                client.retrieve(histories=HISTORIES, top_k=5, index_alias="exact", algorithm="adaptive")
    finally:
        assert server.stop() == 0
    assert got.ids == want_ids.tolist()
    np.testing.assert_allclose(np.array(got.scores), want_scores.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["pq", "hierarchical"])
def test_pq_and_hierarchical_indexes_are_served(
    kind: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    bundle = load_bundle(artifacts["bundle"])
    exact = MolIndex.load(artifacts["index_a"])
    if kind == "pq":
        index = build_pq(exact, subspaces=4, codebook_size=16)
        # k-means codes rerank by default; the request turns that off (the quantized ranking)
        params = SearchParams(algorithm="pq", k_prime=20, rerank=False)
        wire = {"k_prime": 20, "rerank": False}
    else:
        index = build_hierarchical(exact, branching=(4, 3))
        params = SearchParams(algorithm="hierarchical", beam=2)
        wire = {"beam": 2}
    path = index.save(tmp_path / kind)
    with torch.inference_mode():
        query = bundle.encode(HISTORIES)
    want_scores, want_ids = MolIndex.load(path).search(query, 5, exclude=HISTORIES, params=params)
    server = start_server(tmp_path, "--bundle", str(artifacts["bundle"]), "--index", f"{kind}={path}")
    try:
        with RetrievalClient(server.target, timeout=60) as client:
            got = client.retrieve(
                histories=HISTORIES, top_k=5, exclude_history=True, algorithm=kind, params=wire
            )
            listed = {info.index_version: info.kind for info in client.list_indexes().indexes}
    finally:
        assert server.stop() == 0
    assert got.ids == want_ids.tolist()
    np.testing.assert_allclose(np.array(got.scores), want_scores.numpy(), rtol=1e-5, atol=1e-6)
    assert list(listed.values()) == [kind]
