"""A jointly trained index layer ([index]): config checks, warm start, training through it, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mol_core.bundle import load_bundle
from mol_core.errors import ArtifactError, ConfigError
from mol_core.metrics import RankingMetrics
from mol_core.similarity import ItemSide
from mol_train.config import load_config
from mol_train.data import iter_eval_batches, make_synthetic
from mol_train.evaluate import EVAL_KS, evaluate_encoder
from mol_train.export import export_bundle
from mol_train.model import build_model
from mol_train.train import fit, restore_encoder

pytest.importorskip("mol_index")

from mol_index.layers import PQItemLayer, layer_from_bundle

FAST = ["data.max_len=12", "train.batch_size=32", "train.num_negatives=16", "train.epochs=2"]
PQ = [
    "index.kind='pq'",
    "index.subspaces=2",
    "index.codebook_size=8",
    "index.coarse=2",
    "index.warmup_steps=3",
]


@pytest.fixture(scope="module")
def dataset():  # type: ignore[no-untyped-def]
    return make_synthetic(num_users=200, num_items=60, max_len=12, seed=1)


def test_bad_index_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"index\.kind must be"):
        load_config("tiny_cpu", ["index.kind='ivf'"])
    with pytest.raises(ConfigError, match="must divide the item component width 8"):
        load_config("tiny_cpu", ["index.kind='pq'", "index.subspaces=3"])
    with pytest.raises(ConfigError, match=r"index\.branching"):
        load_config("tiny_cpu", ["index.kind='hierarchical'", "index.branching=[4, 1]"])
    with pytest.raises(ConfigError, match="list of integers"):
        load_config("tiny_cpu", ["index.kind='hierarchical'", "index.branching='many'"])
    assert load_config("tiny_cpu", ["index.branching=6"]).index.branching == (6,)


def test_layer_is_off_until_warm_start_then_scores_quantized_items(dataset) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(load_config("tiny_cpu", [*FAST, *PQ]), dataset.num_items).eval()
    assert isinstance(model.index_layer, PQItemLayer)
    assert not model.index_active
    inputs = torch.tensor([[0, 0, 3, 5, 7, 9], [0, 2, 4, 6, 8, 10]])
    targets = torch.tensor([[0, 0, 5, 7, 9, 11], [0, 4, 6, 8, 10, 12]])
    negatives = torch.tensor([[20, 21, 22], [30, 31, 32]])
    with torch.no_grad():
        before = model(inputs, targets, negatives)
    assert float(before.index_loss) == 0.0
    model.warm_start_index(seed=0)
    assert model.index_active
    with torch.no_grad():
        after = model(inputs, targets, negatives)
        # the same loss by hand: the items the layer returns replace the items
        layer = model.index_layer
        corpus = model.similarity.item_side(model.tables.all_item_embeddings())
        quantized = layer(corpus)  # type: ignore[misc]
    assert float(after.index_loss) > 0
    assert not torch.allclose(quantized.embeddings, corpus.embeddings)
    assert after.softmax != pytest.approx(float(before.softmax), abs=1e-6)
    # every quantized component embedding is a centroid + one codeword per subspace: at most C * K^M values
    distinct = torch.unique(quantized.embeddings.reshape(-1, 8).round(decimals=5), dim=0)
    assert distinct.shape[0] <= 2 * 8**2


def test_fit_trains_the_layer_and_export_carries_it(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = load_config("tiny_cpu", [*FAST, *PQ])
    result = fit(config, dataset, tmp_path / "run", progress=False)
    assert result.epochs_run == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["index"]["kind"] == "pq"
    _, encoder = restore_encoder(tmp_path / "run", dataset.num_items)
    assert encoder.index_layer is not None
    assert bool(encoder.index_layer.warmed)
    bundle = export_bundle(
        encoder, list(dataset.item_vocab), tmp_path / "bundle", max_len=12, use_timestamps=True
    )
    loaded = load_bundle(bundle)
    assert loaded.manifest.parameters["index_layer.kind"] == "pq"
    layer = layer_from_bundle(bundle, loaded.similarity)
    assert isinstance(layer, PQItemLayer)
    for name, value in encoder.index_layer.state_dict().items():
        torch.testing.assert_close(layer.state_dict()[name].to(value.dtype), value)


def test_export_refuses_a_layer_that_never_warmed_up(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = build_model(load_config("tiny_cpu", [*FAST, *PQ]), dataset.num_items).eval()
    with pytest.raises(ArtifactError, match="never warm-started"):
        export_bundle(
            model.query_encoder(), list(dataset.item_vocab), tmp_path / "b", max_len=12, use_timestamps=True
        )
    assert not (tmp_path / "b").exists()


def test_mol_index_builds_the_pq_index_from_the_bundle_without_kmeans(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mol_index import MolIndex
    from mol_index.cli import main as mol_index_main

    torch.manual_seed(0)
    model = build_model(load_config("tiny_cpu", [*FAST, *PQ]), dataset.num_items).eval()
    model.warm_start_index(seed=0)
    encoder = model.query_encoder()
    bundle = export_bundle(encoder, list(dataset.item_vocab), tmp_path / "b", max_len=12, use_timestamps=True)
    assert mol_index_main(["build", str(tmp_path / "pq"), "--bundle", str(bundle), "--kind", "pq"]) == 0
    index = MolIndex.load(tmp_path / "pq")
    assert index.pq is not None
    assert index.pq.source == "joint"
    # the stored codes are the trained layer's assignment of every item (no k-means ran)
    corpus = model.corpus_side(encoder)
    with torch.no_grad():
        torch.testing.assert_close(
            index.pq.decode(0, dataset.num_items), model.index_layer(corpus).embeddings, atol=1e-5, rtol=1e-5
        )
    # a bundle whose layer is of another kind is refused, unless asked to refit
    args = ["build", str(tmp_path / "h"), "--bundle", str(bundle), "--kind", "hierarchical"]
    assert mol_index_main(args) == 2
    assert not (tmp_path / "h").exists()
    assert mol_index_main([*args, "--refit", "--branching", "4,2"]) == 0


def test_a_hierarchical_layer_trains_with_the_model_and_becomes_the_index(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mol_index import MolIndex, SearchParams
    from mol_index.cli import main as mol_index_main
    from mol_index.layers.hierarchical import HierarchicalLayer

    hierarchical = ["index.kind='hierarchical'", "index.branching=[3, 2]", "index.warmup_steps=3"]
    config = load_config("tiny_cpu", [*FAST, *hierarchical])
    fit(config, dataset, tmp_path / "run", progress=False)
    _, encoder = restore_encoder(tmp_path / "run", dataset.num_items)
    layer = encoder.index_layer
    assert isinstance(layer, HierarchicalLayer)
    assert bool(layer.warmed)
    bundle = export_bundle(encoder, list(dataset.item_vocab), tmp_path / "b", max_len=12, use_timestamps=True)
    assert (
        mol_index_main(["build", str(tmp_path / "h"), "--bundle", str(bundle), "--kind", "hierarchical"]) == 0
    )
    index = MolIndex.load(tmp_path / "h")
    assert index.parameters["source"] == "joint"
    tree = index.hierarchical
    assert tree is not None
    # the tree's top level is the trained layer's (active) level-1 centroids, not a new k-means
    active = layer.active0  # type: ignore[union-attr]
    torch.testing.assert_close(tree.centroids[0].embeddings, layer.embeddings[0][active].detach())
    # a beam over every cluster is exact search
    query = encoder(torch.tensor([[0, 0, 1, 2, 3]]).expand(2, -1))
    wide = index.search(query, 5, params=SearchParams(algorithm="hierarchical", beam=64))
    exact = index.search(query, 5, params=SearchParams(algorithm="exact"))
    assert torch.equal(wide[1], exact[1])


def test_evaluation_ranks_the_quantized_items_once_the_layer_is_warm(dataset) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(load_config("tiny_cpu", [*FAST, *PQ]), dataset.num_items).eval()
    raw_before = evaluate_encoder(model.query_encoder(), dataset, "test")
    model.warm_start_index(seed=0)
    encoder = model.query_encoder()
    got = evaluate_encoder(encoder, dataset, "test")

    # reference: rank the items rebuilt from their stored codes (encode, then decode by hand)
    encoder.eval()
    layer = encoder.index_layer
    assert isinstance(layer, PQItemLayer)
    quantizer = layer.quantizer
    with torch.no_grad():
        corpus = encoder.similarity.item_side(encoder.item_table[1:])
        flat = corpus.embeddings.reshape(-1, corpus.embeddings.shape[-1]).float()
        coarse, codes = quantizer.encode(flat)
        words = torch.stack([quantizer.codebooks[m, codes[:, m]] for m in range(codes.shape[1])], dim=1)
        rotated = quantizer.centroids[coarse] + words.reshape(flat.shape[0], -1)
        decoded = rotated @ quantizer.rotation.matrix().T  # type: ignore[union-attr]
        quantized = ItemSide(decoded.view_as(corpus.embeddings), corpus.gating)
        metrics = RankingMetrics(ks=EVAL_KS)
        for batch in iter_eval_batches(dataset, "test", 64):
            query = encoder(batch.history, batch.timestamps, batch.target_timestamps, batch.user_rows)
            metrics.update(
                encoder.similarity.score_corpus(query, quantized), batch.target_columns(), seen=batch.seen()
            )
    want = metrics.compute()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    # the warm layer changed what is ranked (before it, the same encoder ranked the raw items)
    assert got["mrr"] != pytest.approx(raw_before["mrr"], abs=1e-6)
