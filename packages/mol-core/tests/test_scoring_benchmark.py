"""The MoL scoring benchmark's FLOP count and its GEMM-rate fractions (benchmarks/bench_mol_scoring.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mol_core.similarity import MoLSimilarity


@pytest.fixture(scope="module")
def scoring_benchmark() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mol_scoring.py"
    spec = importlib.util.spec_from_file_location("bench_mol_scoring", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_flops_per_pair_counts_the_three_matrix_products(scoring_benchmark: ModuleType) -> None:
    paper = MoLSimilarity(query_input_dim=50, item_input_dim=50)  # 8 x 4 x 64, gating hidden 128
    # component logits 32 x 64 multiply-adds, hidden 32 x 128, out 128 x 32; two FLOPs each
    assert scoring_benchmark.mol_flops_per_pair(paper) == 2 * (32 * 64 + 32 * 128 + 128 * 32) == 20480
    small = MoLSimilarity(
        query_input_dim=8,
        item_input_dim=8,
        query_components=2,
        item_components=3,
        component_dim=5,
        gating_hidden_dim=7,
    )
    assert scoring_benchmark.mol_flops_per_pair(small) == 2 * (6 * 5 + 6 * 7 + 7 * 6)
