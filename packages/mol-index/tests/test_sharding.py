"""Sharded indexes: the stable shard rule, exact results equal to one unsharded index, the shard-set
folder and its integrity checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mol_core import ArtifactError, ConfigError
from mol_core.similarity import DotProductSimilarity
from mol_index import MolIndex
from mol_index.artifact import read_artifact
from mol_index.params import ExactParams, RailsParams
from mol_index.sharding import (
    SHARD_SET_FILE,
    ShardedIndex,
    build_shards,
    merge_top_k,
    read_shard_set,
    shard_of,
)


def splitmix64(value: int) -> int:
    """The reference splitmix64 finaliser on Python integers (mod 2**64)."""
    mask = (1 << 64) - 1
    z = (value + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_shard_rule_is_splitmix64_mod_s_and_depends_on_the_id_only() -> None:
    ids = torch.tensor([0, 1, 2, 17, 123_456_789_012, 2**62 + 5])
    got = shard_of(ids, 7)
    assert got.tolist() == [splitmix64(int(i)) % 7 for i in ids]
    assert shard_of(ids[3:4], 7).tolist() == got[3:4].tolist()  # alone or with others: the same shard
    counts = torch.bincount(shard_of(torch.arange(40_000), 4), minlength=4)
    assert counts.min() > 9_500  # balanced: 10,000 expected per shard, standard deviation about 87
    with pytest.raises(ConfigError, match="num_shards must be a positive integer"):
        shard_of(ids, 0)


def test_merge_top_k_pads_and_orders() -> None:
    first = (torch.tensor([[0.9, 0.1]]), torch.tensor([[4, 7]]))
    second = (torch.tensor([[0.5]]), torch.tensor([[2]]))
    scores, ids = merge_top_k([first, second], 4)
    assert ids.tolist() == [[4, 2, 7, -1]]
    assert scores[0, :3].tolist() == pytest.approx([0.9, 0.5, 0.1])
    assert scores[0, 3] == float("-inf")


def test_exact_sharded_search_equals_the_unsharded_index(
    mol_corpus: Callable[..., tuple], tmp_path: Path
) -> None:
    sim, query, corpus = mol_corpus(3, 500, 6)
    ids = torch.arange(500) * 3 + 11
    whole = MolIndex.build(sim, ids, corpus)
    sharded = ShardedIndex.from_index(whole, 3)
    assert [s.num_items for s in sharded.shards] == torch.bincount(shard_of(ids, 3)).tolist()
    exclude = [[14, 20], []] + [[] for _ in range(4)]
    for k in (1, 10, 200):
        want = whole.search(query, k, params=ExactParams(), exclude=exclude)
        got = sharded.search(query, k, params=ExactParams(), exclude=exclude)
        assert torch.equal(got[1], want[1])
        torch.testing.assert_close(got[0], want[0])
    info = sharded.search_with_info(query, 10, params=ExactParams())
    assert bool(info.exact.all())
    assert info.num_candidates.tolist() == [500] * 6  # every shard scanned whole
    rails = sharded.search_with_info(query, 10, params=RailsParams(k_prime=64, guarantee_exact=True))
    assert bool(rails.exact.all())
    assert torch.equal(rails.ids, whole.search(query, 10, params=ExactParams())[1])
    path = sharded.save(tmp_path / "set")
    loaded = ShardedIndex.load(path)
    assert loaded.version == sharded.version != ""
    manifest = json.loads((path / SHARD_SET_FILE).read_text())
    assert manifest["num_shards"] == 3
    assert [e["path"] for e in manifest["shards"]] == [f"shard-0000{s}-of-00003" for s in range(3)]
    assert torch.equal(
        loaded.search(query, 10, params=ExactParams())[1], whole.search(query, 10, params=ExactParams())[1]
    )
    alone = MolIndex.load(path / manifest["shards"][1]["path"])  # a shard is an ordinary artifact
    assert alone.num_items == manifest["shards"][1]["items"]
    info = read_shard_set(path)  # manifests only: what a front tier reads
    assert info.version == loaded.version
    assert info.num_items == 500
    assert [s.number for s in info.shards] == [0, 1, 2]
    assert [s.num_items for s in info.shards] == [s.num_items for s in sharded.shards]
    assert [s.index_version for s in info.shards] == [
        read_artifact(path / e["path"]).manifest.index_version for e in manifest["shards"]
    ]
    assert {s.kind for s in info.shards} == {"exact"}
    assert info.similarity.mixture_of_logits.query_components == sim.num_query_components


def test_dot_product_and_faiss_stage_shards(tmp_path: Path) -> None:
    torch.manual_seed(0)
    items = torch.randn(300, 8)
    sim = DotProductSimilarity(8)
    shards = build_shards(sim, torch.arange(300), items, 2, stage="flat")
    assert {s.kind for s in shards} == {"faiss-flat"}
    whole = MolIndex.build(sim, torch.arange(300), items)
    queries = torch.randn(4, 8)
    want = whole.search(queries, 5, params=ExactParams())
    got = ShardedIndex(shards).search(queries, 5, params=ExactParams())
    assert torch.equal(got[1], want[1])


def test_bad_shard_sets_are_refused(mol_corpus: Callable[..., tuple], tmp_path: Path) -> None:
    sim, query, corpus = mol_corpus(4, 60, 2)
    whole = MolIndex.build(sim, torch.arange(60), corpus)
    sharded = ShardedIndex.from_index(whole, 2)
    with pytest.raises(ConfigError, match=r"k must be in \[1, N=60\]"):
        sharded.search(query, 61)
    with pytest.raises(ConfigError, match="would be empty"):
        ShardedIndex.from_index(whole, 200)
    path = sharded.save(tmp_path / "set")
    with pytest.raises(ArtifactError, match="already exists"):
        sharded.save(path)
    manifest = json.loads((path / SHARD_SET_FILE).read_text())
    other = ShardedIndex.from_index(MolIndex.build(sim, torch.arange(60) + 1000, corpus), 2).save(
        tmp_path / "other"
    )
    shard = manifest["shards"][0]["path"]
    (path / shard / "manifest.json").write_bytes((other / shard / "manifest.json").read_bytes())
    with pytest.raises(ArtifactError, match="not the shard the shard set names"):
        ShardedIndex.load(path)
    with pytest.raises(ArtifactError, match="not the shard the shard set names"):
        read_shard_set(path)
    (path / SHARD_SET_FILE).write_text("{}")
    with pytest.raises(ArtifactError, match="not a readable shard-set manifest"):
        ShardedIndex.load(path)
