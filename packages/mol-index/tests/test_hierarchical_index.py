"""A ``hierarchical`` MolIndex: build, artifact round trip, items added and removed without a rebuild."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mol_core.errors import ConfigError
from mol_index import MolIndex, SearchParams, build_hierarchical
from mol_index.cli import main

WIDE = SearchParams(algorithm="hierarchical", beam=64)
EXACT = SearchParams(algorithm="exact")


def test_wide_beam_equals_exact_and_the_artifact_round_trips(
    mol_corpus: Callable[..., tuple], tmp_path: Path
) -> None:
    sim, query, corpus = mol_corpus(0, 400, 4)
    index = build_hierarchical(MolIndex.build(sim, torch.arange(500, 900), corpus), branching=(4, 3))
    assert index.kind == "hierarchical"
    exact_scores, exact_ids = index.search(query, 10, exclude=[[500], [], [], [899]], params=EXACT)
    scores, ids = index.search(query, 10, exclude=[[500], [], [], [899]], params=WIDE)
    assert torch.equal(ids, exact_ids)
    torch.testing.assert_close(scores, exact_scores, atol=1e-5, rtol=0)
    narrow = index.search_with_info(query, 10, params=SearchParams(algorithm="hierarchical", beam=1))
    assert int(narrow.num_candidates.max()) < 400  # scored centroids + items: a fraction of the corpus
    index.save(tmp_path / "h")
    loaded = MolIndex.load(tmp_path / "h")
    again = loaded.search_with_info(query, 10, params=SearchParams(algorithm="hierarchical", beam=1))
    assert torch.equal(again.ids, narrow.ids)
    assert torch.equal(again.num_candidates, narrow.num_candidates)


def test_items_added_and_removed_without_a_rebuild(mol_corpus: Callable[..., tuple], tmp_path: Path) -> None:
    sim, query, corpus = mol_corpus(1, 300, 3)
    index = build_hierarchical(MolIndex.build(sim, torch.arange(200), corpus.slice(0, 200)), branching=(4, 2))
    index.add_items(torch.arange(1000, 1100), corpus.slice(200, 300))
    reference = MolIndex.build(sim, torch.cat([torch.arange(200), torch.arange(1000, 1100)]), corpus)
    want_scores, want_ids = reference.search(query, 10, params=EXACT)
    for params in (WIDE, EXACT):
        scores, ids = index.search(query, 10, params=params)
        assert torch.equal(ids, want_ids)
        torch.testing.assert_close(scores, want_scores, atol=1e-5, rtol=0)
    gone = [int(i) for i in want_ids[:, :3].flatten()]
    index.remove_items(gone)
    index.save(tmp_path / "h")
    loaded = MolIndex.load(tmp_path / "h")
    _, want_after = reference.search(query, 10, exclude=[gone] * 3, params=EXACT)
    for searched in (index, loaded):
        for params in (WIDE, EXACT, SearchParams(algorithm="comb_topk")):
            _, ids = searched.search(query, 10, params=params)
            assert not set(ids.flatten().tolist()) & set(gone)
        assert torch.equal(searched.search(query, 10, params=WIDE)[1], want_after)


def test_bad_updates(mol_corpus: Callable[..., tuple]) -> None:
    sim, _, corpus = mol_corpus(2, 100, 1)
    plain = MolIndex.build(sim, torch.arange(100), corpus)
    with pytest.raises(ConfigError, match="add_items needs an index of kind 'hierarchical'"):
        plain.add_items(torch.tensor([500]), corpus.slice(0, 1))
    index = build_hierarchical(plain, branching=(4,))
    with pytest.raises(ConfigError, match=r"ids \[5\] are already in the index"):
        index.add_items(torch.tensor([5]), corpus.slice(0, 1))
    with pytest.raises(ConfigError, match=r"ids \[777\] are not in the index"):
        index.remove_items([777])
    with pytest.raises(ConfigError, match=r"too few items|at least"):
        build_hierarchical(MolIndex.build(sim, torch.arange(3), corpus.slice(0, 3)), branching=(8,))
    with pytest.raises(ConfigError, match="algorithm 'hierarchical' needs an index of kind 'hierarchical'"):
        plain.search(sim.query_side(torch.randn(1, 8)), 1, params=SearchParams(algorithm="hierarchical"))


def test_cli_builds_a_hierarchical_index_from_arrays(
    mol_corpus: Callable[..., tuple], tmp_path: Path
) -> None:
    from google.protobuf import json_format
    from safetensors.torch import save_file

    from mol_core.similarity import similarity_to_config

    sim, _, corpus = mol_corpus(3, 200, 1)
    save_file(
        {"item_embeddings": corpus.embeddings, "item_gating": corpus.gating},
        str(tmp_path / "items.safetensors"),
    )
    save_file(dict(sim.state_dict()), str(tmp_path / "sim.safetensors"))
    (tmp_path / "sim.json").write_text(json_format.MessageToJson(similarity_to_config(sim)))
    args = [
        "build",
        str(tmp_path / "h"),
        "--items",
        str(tmp_path / "items.safetensors"),
        "--similarity-config",
        str(tmp_path / "sim.json"),
        "--similarity-state",
        str(tmp_path / "sim.safetensors"),
        "--kind",
        "hierarchical",
    ]
    assert main([*args, "--branching", "4,x"]) == 2
    assert not (tmp_path / "h").exists()
    assert main([*args, "--branching", "4,3"]) == 0
    index = MolIndex.load(tmp_path / "h")
    assert index.hierarchical is not None
    assert index.hierarchical.branching == (4, 3)
