"""An index built from a mol-train model bundle answers like exact search over the bundle's items."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("mol_train", reason="building a bundle fixture needs mol-train (installed by nox)")

from mol_index import build_from_bundle, exact_search
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
