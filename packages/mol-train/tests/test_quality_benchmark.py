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


def _result(seeds: list[int], hr10: dict[tuple[str, int], float], epochs: int = 20) -> dict[str, object]:
    """A result file of the benchmark with one run per (model, seed): every metric of a run is its
    ``hr10`` value, its validation curve one point."""
    runs = []
    for (model, seed), value in hr10.items():
        metrics = dict.fromkeys(BENCH_MODULE.METRICS, value)
        runs.append(
            {
                "model": model,
                "seed": seed,
                "epochs_run": epochs,
                "best_epoch": epochs,
                "train_sequences_per_second": 10.0,
                "valid": metrics,
                "test": metrics,
                "valid_curve": [{"epoch": epochs, "hr@10": value, "ndcg@10": value}],
            }
        )
    protocol = {"epochs": epochs, "scale": ["data.max_len=200"], "seeds": seeds}
    return {"data": "ml-1m", "protocol": protocol, "runs": runs, "summary": BENCH_MODULE.summarize(runs)}


def test_result_files_of_other_seeds_merge_into_one_summary() -> None:
    first = _result([0], {("mol", 0): 0.30, ("dot", 0): 0.20})
    second = _result([1, 2], {("mol", 1): 0.32, ("mol", 2): 0.34, ("dot", 1): 0.22, ("dot", 2): 0.18})
    merged = BENCH_MODULE.merge_results([first, second])
    assert merged["protocol"]["seeds"] == [0, 1, 2]
    mol = merged["summary"]["mol"]["test hr@10"]
    assert mol["mean"] == pytest.approx(0.32)
    assert mol["std"] == pytest.approx(0.02)  # sample standard deviation of .30, .32, .34
    assert sorted(mol["values"]) == pytest.approx([0.30, 0.32, 0.34])
    table = BENCH_MODULE.markdown(merged)
    assert "| mol | 3 |" in table
    assert "MoL ahead by more than the seed spread" in table  # gap .12 against spreads .02 and .02

    with pytest.raises(ValueError, match="different protocols"):
        BENCH_MODULE.merge_results([first, _result([1], {("mol", 1): 0.3}, epochs=10)])
    with pytest.raises(ValueError, match=r"same \(model, seed\) run"):
        BENCH_MODULE.merge_results([first, first])
