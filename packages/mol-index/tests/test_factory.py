"""index_factory builds each kind from its spec, load_index returns each kind's class, and every kind takes
ExactParams / RailsParams plus its own parameters class (and refuses another kind's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mol_core.errors import ConfigError
from mol_index import (
    AdaptiveParams,
    Algorithm,
    ExactParams,
    HierarchicalParams,
    IndexAdaptive,
    IndexExact,
    IndexFaiss,
    IndexHierarchical,
    IndexPQ,
    MolIndex,
    PQParams,
    RailsParams,
    SearchParams,
    exact_search,
    index_factory,
    load_index,
)

SPECS = [
    ("exact", IndexExact, "exact"),
    ("flat", IndexFaiss, "faiss-flat"),
    ("IVF4", IndexFaiss, "faiss-ivf"),
    ("hnsw16", IndexFaiss, "faiss-hnsw"),
    ("pq2x16", IndexPQ, "pq"),
    ("hierarchical4x3", IndexHierarchical, "hierarchical"),
    ("adaptive", IndexAdaptive, "adaptive"),
]
OWN = {
    IndexPQ: PQParams(k_prime=64),
    IndexHierarchical: HierarchicalParams(beam=4),
    IndexAdaptive: AdaptiveParams(budget=60, rounds=2),
}


@pytest.mark.parametrize(("spec", "cls", "kind"), SPECS, ids=[s[0] for s in SPECS])
def test_each_spec_builds_its_kind_which_saves_loads_and_answers_exact_rails_and_its_own_params(
    mol_corpus: Callable[..., tuple], tmp_path: Path, spec: str, cls: type[MolIndex], kind: str
) -> None:
    sim, query, corpus = mol_corpus(0, 300, 6)
    ids = torch.arange(300) * 7 + 5
    train = mol_corpus(1, 300, 40)[1] if spec == "adaptive" else None
    quick = {"iterations": 3} if cls in (IndexPQ, IndexHierarchical, IndexAdaptive) else {}
    index = index_factory(sim, ids, corpus, spec, train_queries=train, **quick)
    assert type(index) is cls
    assert index.kind == kind
    loaded = load_index(index.save(tmp_path / "index"))
    assert type(loaded) is cls
    assert loaded.kind == kind
    with torch.inference_mode():
        want_scores, want_rows = exact_search(sim, query, corpus, 5)
    for params in (ExactParams(kernel="torch"), SearchParams(algorithm="exact")):
        scores, found = loaded.search(query, 5, params=params)
        assert torch.equal(found, ids[want_rows])  # the exact scan answers on every kind
        torch.testing.assert_close(scores, want_scores)
    rails = loaded.search_with_info(query, 5, params=RailsParams(k_prime=300))
    assert rails.ids.shape == (6, 5)
    assert bool((rails.ids >= 0).all())
    own = OWN.get(cls)
    if own is not None:
        result = loaded.search_with_info(query, 5, params=own)
        assert result.ids.shape == (6, 5)
        assert set(result.ids.flatten().tolist()) <= set(ids.tolist())
    for other_cls, other in OWN.items():
        if other_cls is not cls:
            name = other.algorithm.value
            with pytest.raises(ConfigError, match=f"algorithm '{name}' needs an index of kind '{name}'"):
                loaded.search(query, 5, params=other)


def test_the_number_in_a_spec_reaches_the_build(mol_corpus: Callable[..., tuple]) -> None:
    sim, _, corpus = mol_corpus(0, 400, 2)
    ids = torch.arange(400)
    assert index_factory(sim, ids, corpus, "ivf5").parameters["nlist"] == "5"
    assert index_factory(sim, ids, corpus, "hnsw8").parameters["hnsw_m"] == "8"
    pq = index_factory(sim, ids, corpus, "pq4x16")
    assert isinstance(pq, IndexPQ)
    assert pq.pq.codes.shape[-1] == 4  # four subspaces, one code each
    tree = index_factory(sim, ids, corpus, "hierarchical5x2", iterations=2)
    assert isinstance(tree, IndexHierarchical)
    assert tree.hierarchical.branching == (5, 2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("annoy", "unknown index spec 'annoy'"),
        ("exact4", "expected 0 number"),
        ("flat2", "expected 0 number"),
        ("pq8", "expected 2 number"),
        ("ivf0", "must be positive"),
        ("adaptive", "needs train_queries"),
    ],
)
def test_bad_specs_are_refused_by_name(mol_corpus: Callable[..., tuple], spec: str, message: str) -> None:
    sim, _, corpus = mol_corpus(0, 100, 2)
    with pytest.raises(ConfigError, match=message):
        index_factory(sim, torch.arange(100), corpus, spec)


def test_options_of_another_kind_are_refused_by_name(mol_corpus: Callable[..., tuple]) -> None:
    sim, _, corpus = mol_corpus(0, 100, 2)
    with pytest.raises(ConfigError, match=r"spec 'hnsw' takes the options .*ef_construction.*; got beam"):
        index_factory(sim, torch.arange(100), corpus, "hnsw", beam=4)
    with pytest.raises(ConfigError, match="'exact' takes no layer"):
        index_factory(sim, torch.arange(100), corpus, "exact", layer=torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="'pq' takes no train_queries"):
        index_factory(sim, torch.arange(100), corpus, "pq", train_queries=mol_corpus(1, 100, 4)[1])


def test_search_params_resolve_to_each_algorithms_own_class() -> None:
    assert SearchParams(algorithm="exact", kernel="torch", block_size=7).resolve() == ExactParams(
        kernel="torch", block_size=7
    )
    assert SearchParams(algorithm="topk_avg", k_prime=9, nprobe=3).resolve() == RailsParams(
        algorithm=Algorithm.TOP_K_AVG, k_prime=9, nprobe=3
    )
    assert SearchParams(algorithm="pq", k_prime=5, rerank=True).resolve() == PQParams(k_prime=5, rerank=True)
    assert SearchParams(algorithm="hierarchical", beam=3).resolve() == HierarchicalParams(beam=3)
    assert SearchParams(algorithm="adaptive", budget=50, rounds=2).resolve() == AdaptiveParams(
        budget=50, rounds=2
    )
    with pytest.raises(ConfigError, match=r"RailsParams\.algorithm must be one of 'topk_per_embd'"):
        RailsParams(algorithm="exact")
    with pytest.raises(ConfigError, match=r"HierarchicalParams\.beam must be >= 1"):
        HierarchicalParams(beam=0)
