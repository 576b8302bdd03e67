"""The server's exact scan through the fused Triton top-k (``--kernel triton``), in a real subprocess.

On a machine without a GPU the kernel runs under ``TRITON_INTERPRET=1`` (set by the repository's
conftest and inherited by the server process); on a GPU machine ``--device auto`` puts the index there.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import start_server
from mol_core.similarity import ItemSide, MoLSimilarity
from mol_index import MolIndex, SearchParams
from mol_serve import RetrievalClient

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'mol-index[triton]')", allow_module_level=True)

NUM_ITEMS = 70


def kernel_sized_index(path: Path, *, pq: int = 4, px: int = 4) -> Path:
    """A random MoL index with P = pq * px, d = 16 and gating hidden 16 (the kernel needs P >= 16)."""
    torch.manual_seed(1)
    sim = MoLSimilarity(
        query_input_dim=8,
        item_input_dim=8,
        query_components=pq,
        item_components=px,
        component_dim=16,
        gating_hidden_dim=16,
    ).eval()
    with torch.inference_mode():
        items = sim.item_side(torch.randn(NUM_ITEMS, 8))
    ids = torch.arange(NUM_ITEMS, dtype=torch.int64) * 10 + 7
    return MolIndex.build(sim, ids, ItemSide(items.embeddings.clone(), items.gating.clone())).save(path)


def test_triton_kernel_serves_the_exact_results(tmp_path: Path) -> None:
    assert torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    path = kernel_sized_index(tmp_path / "index")
    index = MolIndex.load(path)
    with torch.inference_mode():
        query = index.similarity.query_side(torch.randn(3, 8, generator=torch.Generator().manual_seed(2)))
    want_scores, want_ids = index.search(
        query, 6, exclude=[[7, 17]] * 3, params=SearchParams(algorithm="exact", kernel="torch")
    )
    server = start_server(tmp_path, "--index", f"main={path}", "--kernel", "triton")
    try:
        with RetrievalClient(server.target, timeout=120) as client:
            got = client.retrieve(
                embeddings=query.embeddings.numpy(),
                gating=query.gating.numpy(),
                top_k=6,
                exclude_ids=[7, 17],
                algorithm="exact",
            )
    finally:
        assert server.stop() == 0
    assert got.ids == want_ids.tolist()
    np.testing.assert_allclose(np.array(got.scores), want_scores.numpy(), rtol=1e-5, atol=1e-5)
    assert all(7 not in row and 17 not in row for row in got.ids)


def test_forced_triton_kernel_refuses_an_index_it_cannot_scan(tmp_path: Path) -> None:
    path = kernel_sized_index(tmp_path / "small-p", pq=2, px=4)  # P = 8 < 16
    with pytest.raises(RuntimeError, match=r"kernel='triton' cannot search this index"):
        start_server(tmp_path, "--index", f"main={path}", "--kernel", "triton", timeout=60)
