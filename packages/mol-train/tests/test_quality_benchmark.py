"""The quality benchmark's ablations are valid configurations that each change the MoL preset."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mol_train.config import load_config

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mol_train_quality.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mol_train_quality", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


BENCH_MODULE = _bench()


@pytest.mark.parametrize("name", sorted(BENCH_MODULE.ABLATIONS))
def test_each_ablation_is_a_valid_config_that_differs_from_the_preset(name: str) -> None:
    preset = BENCH_MODULE.PRESETS["mol"]
    base = load_config(preset, BENCH_MODULE.SCALE)
    ablated = load_config(preset, [*BENCH_MODULE.SCALE, *BENCH_MODULE.ABLATIONS[name]])
    assert ablated != base
    assert ablated.similarity.kind == base.similarity.kind
