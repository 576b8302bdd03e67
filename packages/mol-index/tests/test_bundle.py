"""Indexes built from a mol-train model bundle (API, CLI, benchmark) answer like exact search."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("mol_train", reason="building a bundle fixture needs mol-train (installed by nox)")

import hashlib

from mol_index import MolIndex, build_from_bundle, exact_search
from mol_index.cli import main
from mol_train.config import load_config
from mol_train.data import make_synthetic
from mol_train.export import export_bundle
from mol_train.model import build_model


def test_index_from_bundle_matches_exact_search(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dataset = make_synthetic(num_users=30, num_items=40, max_len=10, seed=4)
    model = build_model(load_config("tiny_cpu", ["data.max_len=10"]), dataset.num_items).eval()
    encoder = model.query_encoder().eval()
    bundle = export_bundle(
        encoder, list(dataset.item_vocab), tmp_path / "bundle", max_len=10, use_timestamps=True
    )
    index = build_from_bundle(bundle)
    with torch.no_grad():
        query = encoder(torch.tensor([[0, 0, 3, 5, 7, 9, 2, 4, 6, 8]]), None, None, None)
        scores, ids = index.search(query, 5)
        want_scores, want_rows = exact_search(model.similarity, query, model.corpus_side(encoder), 5)
    torch.testing.assert_close(scores, want_scores)
    assert ids.tolist() == [[int(dataset.item_vocab[r]) for r in want_rows[0].tolist()]]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    dataset = make_synthetic(num_users=30, num_items=40, max_len=10, seed=4)
    model = build_model(load_config("tiny_cpu", ["data.max_len=10"]), dataset.num_items).eval()
    root = tmp_path_factory.mktemp("bundle")
    return export_bundle(
        model.query_encoder().eval(),
        list(dataset.item_vocab),
        root / "bundle",
        max_len=10,
        use_timestamps=True,
    )


def test_cli_build_from_bundle_records_the_bundle_checksum(bundle_dir: Path, tmp_path: Path) -> None:
    assert main(["build", str(tmp_path / "index"), "--bundle", str(bundle_dir), "--stage", "flat"]) == 0
    index = MolIndex.load(tmp_path / "index")
    want = hashlib.sha256((bundle_dir / "manifest.json").read_bytes()).hexdigest()
    assert index.source_bundle_sha256 == want
    assert index.kind == "faiss-flat"
    reference = build_from_bundle(bundle_dir)
    assert torch.equal(index.item_ids, reference.item_ids)
    assert torch.equal(index.corpus.embeddings, reference.corpus.embeddings)


def test_cli_build_refuses_bundle_with_arrays(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", str(tmp_path / "x"), "--bundle", str(bundle_dir), "--items", "a.npy"]) == 2
    assert "--bundle replaces --items" in capsys.readouterr().err
    assert main(["build", str(tmp_path / "x")]) == 2
    assert "needs --bundle, or --items and --similarity-config" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bench_bundle_rows_use_real_histories(
    index_benchmark: ModuleType, bundle_dir: Path, tmp_path: Path
) -> None:
    from mol_core.bundle import load_bundle

    ids = load_bundle(bundle_dir).item_ids
    lines = [f"{user} {ids[(user * 7 + j) % len(ids)]}" for user in range(40) for j in range(5)]
    (tmp_path / "chrono.txt").write_text("\n".join(lines) + "\n")
    result = index_benchmark.run(
        sizes=[],
        stages={0: ["torch"]},
        k_primes=[4],
        batches_b32=1,
        queries_b1=1,
        bundle=bundle_dir,
        histories=tmp_path / "chrono.txt",
    )
    rows = result["results"]
    assert {r["corpus"] for r in rows} == {"bundle:bundle"}
    assert {r["N"] for r in rows} == {40}
    assert result["violations"] == 0
    guaranteed = [r for r in rows if "guarantee" in r["algorithm"]]
    assert guaranteed[0]["recall"] == 1.0


def test_cli_builds_an_adaptive_index_from_a_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    from mol_core.bundle import load_bundle

    ids = load_bundle(bundle_dir).item_ids
    lines = [f"{user} {ids[(user * 3 + j) % len(ids)]}" for user in range(30) for j in range(6)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    args = ["build", str(tmp_path / "adaptive"), "--bundle", str(bundle_dir), "--kind", "adaptive"]
    assert main([*args, "--train-histories", str(tmp_path / "train.txt"), "--per-query", "10"]) == 0
    index = MolIndex.load(tmp_path / "adaptive")
    assert index.kind == "adaptive"
    assert index.parameters["train_queries"] == "30"
    assert index.adaptive is not None
    assert index.adaptive.items.shape[0] == len(ids)


def test_cli_adaptive_needs_training_histories(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", str(tmp_path / "a"), "--bundle", str(bundle_dir), "--kind", "adaptive"]) == 2
    assert "--kind adaptive needs --bundle and --train-histories" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
