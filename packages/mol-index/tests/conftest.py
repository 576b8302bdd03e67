"""Shared fixtures: small MoL / dot-product similarities, clustered synthetic corpora, the benchmark."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide, Similarity

Corpus = tuple[MoLSimilarity, QuerySide, ItemSide]


def clustered_mol(
    seed: int, num_items: int, batch: int, *, pq: int = 4, px: int = 2, dim: int = 16, clusters: int = 8
) -> Corpus:
    """A random-weight MoL with clustered item components and queries near some clusters.

    Item ``x`` in cluster ``c`` has components ``normalize(center[c, b] + 0.3 * noise)``; each query
    component is near the component of one cluster, so high component logits mark the best items.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    repr_dim = 8
    sim = MoLSimilarity(
        query_input_dim=repr_dim,
        item_input_dim=repr_dim,
        query_components=pq,
        item_components=px,
        component_dim=dim,
        gating_hidden_dim=16,
    ).eval()
    centers = torch.nn.functional.normalize(torch.randn(clusters, px, dim, generator=gen), dim=-1)
    assign = torch.randint(0, clusters, (num_items,), generator=gen)
    g = centers[assign] + 0.3 * torch.randn(num_items, px, dim, generator=gen)  # (N, Px, d)
    q_clusters = torch.randint(0, clusters, (batch, pq), generator=gen)
    comp = torch.randint(0, px, (batch, pq), generator=gen)
    f = centers[q_clusters, comp] + 0.3 * torch.randn(batch, pq, dim, generator=gen)  # (B, Pq, d)
    with torch.inference_mode():
        item_gating = sim.gating.item_features(torch.randn(num_items, repr_dim, generator=gen))
        query_gating = sim.gating.query_features(torch.randn(batch, repr_dim, generator=gen))
    corpus = ItemSide(torch.nn.functional.normalize(g, dim=-1), item_gating.clone())
    query = QuerySide(torch.nn.functional.normalize(f, dim=-1), query_gating.clone())
    return sim, query, corpus


def naive_topk(
    sim: Similarity, query: QuerySide, corpus: ItemSide, k: int, exclude: list[list[int]] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full (B, N) score matrix, masking, torch.topk; also returns the full matrix."""
    with torch.inference_mode():
        full = sim.score_pairs(query, corpus).clone()  # (B, N)
    masked = full.clone()
    for b, rows in enumerate(exclude or []):
        masked[b, [r for r in rows if 0 <= r < corpus.num_items]] = float("-inf")
    top = torch.topk(masked, k, dim=1)
    ids = top.indices.masked_fill(torch.isneginf(top.values), -1)
    return top.values, ids, masked


def assert_same_topk(
    scores: torch.Tensor,
    ids: torch.Tensor,
    ref_scores: torch.Tensor,
    ref_ids: torch.Tensor,
    full: torch.Tensor,
    tol: float = 1e-4,
) -> None:
    """Equal up to float rounding: same scores; differing ids only among items tied with the k-th score."""
    finite = torch.isfinite(ref_scores)
    assert torch.equal(torch.isfinite(scores), finite)
    torch.testing.assert_close(scores[finite], ref_scores[finite], atol=tol, rtol=0)
    assert torch.equal(ids == -1, ref_ids == -1)
    for b in range(ids.shape[0]):
        got, want = set(ids[b].tolist()) - {-1}, set(ref_ids[b].tolist()) - {-1}
        if got == want:
            continue
        kth = ref_scores[b][finite[b]].min()
        for row in got ^ want:
            assert abs(float(full[b, row]) - float(kth)) <= tol, (b, row, got ^ want)


@pytest.fixture
def mol_corpus() -> Callable[..., Corpus]:
    """Factory of clustered MoL corpora (see :func:`clustered_mol`)."""
    return clustered_mol


@pytest.fixture
def reference() -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The naive reference top-k (see :func:`naive_topk`)."""
    return naive_topk


@pytest.fixture
def same_topk() -> Callable[..., None]:
    """The tolerant comparison of two top-k results (see :func:`assert_same_topk`)."""
    return assert_same_topk


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks are scripts outside the package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def index_benchmark() -> ModuleType:
    """benchmarks/bench_mol_index.py as a module."""
    return load_benchmark("bench_mol_index")


@pytest.fixture(scope="session")
def exact_kernels_benchmark() -> ModuleType:
    """benchmarks/bench_exact_kernels.py as a module."""
    return load_benchmark("bench_exact_kernels")
