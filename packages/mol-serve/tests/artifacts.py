"""Builds the test artifacts: a model bundle (with mol-train, tests only) and index artifacts from it."""

from __future__ import annotations

from pathlib import Path

import torch

from mol_core.bundle import ModelBundle, load_bundle
from mol_index import MolIndex

NUM_ITEMS = 60
MAX_LEN = 10


def make_bundle(root: Path) -> Path:
    """A tiny trained-shape (random weight) MoL model bundle over NUM_ITEMS items."""
    from mol_train.config import load_config
    from mol_train.data import make_synthetic
    from mol_train.export import export_bundle
    from mol_train.model import build_model

    torch.manual_seed(0)
    dataset = make_synthetic(num_users=20, num_items=NUM_ITEMS, max_len=MAX_LEN, seed=3)
    model = build_model(load_config("tiny_cpu", [f"data.max_len={MAX_LEN}"]), dataset.num_items).eval()
    encoder = model.query_encoder().eval()
    return export_bundle(
        encoder, list(dataset.item_vocab), root / "bundle", max_len=MAX_LEN, use_timestamps=True
    )


def make_index(bundle: ModelBundle, path: Path, *, scale: float = 1.0) -> Path:
    """An exact index over the bundle's items (``scale`` perturbs the items to make a distinct version)."""
    from mol_core.similarity import ItemSide

    items = bundle.items
    if scale != 1.0:
        items = ItemSide(items.embeddings * scale, items.gating)
    ids = torch.as_tensor([int(x) for x in bundle.item_ids], dtype=torch.int64)
    return MolIndex.build(bundle.similarity, ids, items).save(path)


def build_all(root: Path) -> dict[str, Path]:
    """bundle, index_a, index_b (a second version), bad (a corrupt artifact)."""
    bundle_dir = make_bundle(root)
    bundle = load_bundle(bundle_dir)
    paths = {
        "bundle": bundle_dir,
        "index_a": make_index(bundle, root / "index-a"),
        "index_b": make_index(bundle, root / "index-b", scale=0.5),
    }
    bad = make_index(bundle, root / "bad")
    for file in bad.iterdir():
        if file.suffix == ".safetensors":
            file.write_bytes(file.read_bytes()[:-7] + b"garbage")
            break
    paths["bad"] = bad
    return paths
