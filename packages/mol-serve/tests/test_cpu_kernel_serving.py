"""The server's exact scan through mol-index's fused C++ CPU kernel (``--kernel cpu``), in a subprocess."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import start_server
from mol_core.similarity import ItemSide, MoLSimilarity
from mol_index import MolIndex, SearchParams
from mol_index.kernels import mol_cpu
from mol_serve import RetrievalClient

if mol_cpu.unavailable_reason() is not None:
    pytest.skip(f"the CPU kernel is unavailable: {mol_cpu.unavailable_reason()}", allow_module_level=True)

NUM_ITEMS = 90


def mol_index_at(path: Path, *, dim: int) -> Path:
    """A random MoL index, 4 x 2 components of width ``dim``, gating hidden 24."""
    torch.manual_seed(3)
    sim = MoLSimilarity(
        query_input_dim=8,
        item_input_dim=8,
        query_components=4,
        item_components=2,
        component_dim=dim,
        gating_hidden_dim=24,
    ).eval()
    with torch.inference_mode():
        items = sim.item_side(torch.randn(NUM_ITEMS, 8))
    ids = torch.arange(NUM_ITEMS, dtype=torch.int64) * 10 + 7
    return MolIndex.build(sim, ids, ItemSide(items.embeddings.clone(), items.gating.clone())).save(path)


def test_cpu_kernel_serves_the_exact_results(tmp_path: Path) -> None:
    path = mol_index_at(tmp_path / "index", dim=16)
    index = MolIndex.load(path)
    with torch.inference_mode():
        query = index.similarity.query_side(torch.randn(3, 8, generator=torch.Generator().manual_seed(2)))
    want_scores, want_ids = index.search(
        query, 6, exclude=[[7, 17]] * 3, params=SearchParams(algorithm="exact", kernel="torch")
    )
    server = start_server(tmp_path, "--index", f"main={path}", "--kernel", "cpu", "--device", "cpu")
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
    np.testing.assert_allclose(np.array(got.scores), want_scores.numpy(), rtol=1e-5, atol=2e-5)


def test_forced_cpu_kernel_refuses_an_index_it_cannot_scan(tmp_path: Path) -> None:
    path = mol_index_at(tmp_path / "odd-d", dim=12)  # d not a multiple of 8
    with pytest.raises(RuntimeError, match=r"kernel='cpu' cannot search this index"):
        start_server(tmp_path, "--index", f"main={path}", "--kernel", "cpu", "--device", "cpu", timeout=60)
