"""Index artifacts: round trip, atomic writes, format version, checksums, kinds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mol_core.errors import ArtifactError
from mol_core.similarity import DotProductSimilarity, MoLSimilarity
from mol_index import MolIndex, SearchParams


@pytest.mark.parametrize("stage", ["torch", "flat", "ivf", "hnsw"])
def test_round_trip_gives_identical_results(
    mol_corpus: Callable[..., tuple], tmp_path: Path, stage: str
) -> None:
    sim, query, corpus = mol_corpus(0, 300, 3)
    index = MolIndex.build(sim, torch.arange(300) * 7, corpus, stage=stage)
    path = index.save(tmp_path / "ix")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["num_items"] == "300"
    assert manifest["similarity"]["mixture_of_logits"]["query_components"] == 4
    loaded = MolIndex.load(path)
    assert isinstance(loaded.similarity, MoLSimilarity)
    assert loaded.kind == index.kind
    for algorithm in ("exact", "comb_topk"):
        params = SearchParams(algorithm=algorithm, k_prime=20)
        a, b = index.search(query, 8, params=params), loaded.search(query, 8, params=params)
        assert torch.equal(a[0], b[0])
        assert torch.equal(a[1], b[1])
    assert [p.name for p in tmp_path.iterdir()] == ["ix"]  # no temporary directory left


@pytest.mark.parametrize("exact_mean", [True, False])
def test_the_mean_index_kind_survives_a_round_trip(
    mol_corpus: Callable[..., tuple], tmp_path: Path, exact_mean: bool
) -> None:
    sim, _, corpus = mol_corpus(0, 300, 3)
    index = MolIndex.build(sim, torch.arange(300), corpus, stage="ivf", exact_mean=exact_mean)
    loaded = MolIndex.load(index.save(tmp_path / "ix"))
    assert loaded.parameters["mean_index"] == ("flat" if exact_mean else "ivf")
    assert loaded.faiss_stage is not None
    assert loaded.faiss_stage.exact_mean is exact_mean


def test_dot_product_round_trip(tmp_path: Path) -> None:
    sim = DotProductSimilarity(8, l2_normalize=True, temperature=0.07)
    index = MolIndex.build(sim, torch.arange(30), torch.randn(30, 8), stage="hnsw")
    loaded = MolIndex.load(index.save(tmp_path / "dot"))
    assert isinstance(loaded.similarity, DotProductSimilarity)
    assert loaded.similarity.temperature == 0.07
    assert loaded.similarity.l2_normalize
    q = torch.randn(2, 8)
    assert torch.equal(index.search(q, 5)[1], loaded.search(q, 5)[1])


def _saved(mol_corpus: Callable[..., tuple], tmp_path: Path) -> Path:
    sim, _, corpus = mol_corpus(1, 50, 1)
    return MolIndex.build(sim, torch.arange(50), corpus, stage="flat").save(tmp_path / "ix")


def test_existing_destination_needs_overwrite(mol_corpus: Callable[..., tuple], tmp_path: Path) -> None:
    path = _saved(mol_corpus, tmp_path)
    index = MolIndex.load(path)
    with pytest.raises(ArtifactError, match="already exists"):
        index.save(path)
    index.save(path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]
    MolIndex.load(path)


def test_failed_build_leaves_nothing_behind(
    mol_corpus: Callable[..., tuple], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, _, corpus = mol_corpus(1, 50, 1)
    index = MolIndex.build(sim, torch.arange(50), corpus, stage="flat")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("mol_index.artifact.write_manifest", broken)
    with pytest.raises(ArtifactError, match="disk full"):
        index.save(tmp_path / "ix")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("victim", ["items.safetensors", "similarity.safetensors", "faiss/component_0.faiss"])
def test_corrupt_file_is_detected(mol_corpus: Callable[..., tuple], tmp_path: Path, victim: str) -> None:
    path = _saved(mol_corpus, tmp_path)
    data = bytearray((path / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / victim).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt or was replaced"):
        MolIndex.load(path)


def test_missing_file_is_detected(mol_corpus: Callable[..., tuple], tmp_path: Path) -> None:
    path = _saved(mol_corpus, tmp_path)
    (path / "faiss" / "mean.faiss").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        MolIndex.load(path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format_version", 2, "format version 2 is not supported"),
        ("kind", "ivf-pq", "index kind 'ivf-pq' is not one this mol-index reads"),
    ],
)
def test_other_version_or_kind_is_refused(
    mol_corpus: Callable[..., tuple], tmp_path: Path, field: str, value: object, message: str
) -> None:
    path = _saved(mol_corpus, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest[field] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        MolIndex.load(path)


def test_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        MolIndex.load(tmp_path)
