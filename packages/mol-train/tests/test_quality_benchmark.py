"""The quality benchmark's ablations are valid configurations that each change the MoL preset."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
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


def _job(tmp_path: Path, seed: int = 1) -> dict[str, object]:
    return {
        "model": "mol",
        "seed": seed,
        "preset": "ml1m_hstu_large_mol",
        "overrides": ["train.epochs=2", f"train.seed={seed}"],
        "data": str(tmp_path / "no-data-needed"),
        "out": str(tmp_path / "run"),
    }


def test_a_finished_run_is_reused_and_a_foreign_record_is_refused(tmp_path: Path) -> None:
    job = _job(tmp_path)
    record = {k: job[k] for k in ("model", "seed", "preset", "overrides")} | {"test": {"hr@10": 0.25}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / BENCH_MODULE.RUN_RECORD).write_text(json.dumps(record))
    reused = BENCH_MODULE._run(job)  # no data set exists: reuse must not train or even load data
    assert reused["reused"] is True
    assert reused["test"] == {"hr@10": 0.25}
    with pytest.raises(SystemExit, match="records another run"):
        BENCH_MODULE._run(_job(tmp_path, seed=2))


def test_an_interrupted_run_resumes_and_records_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mol_train import data, train

    calls: list[bool] = []

    def fake_fit(config: object, dataset: object, out: Path, *, progress: bool, resume: bool) -> object:
        calls.append(resume)
        (Path(out) / "metrics.jsonl").write_text(
            json.dumps({"kind": "valid", "epoch": 2, "hr@10": 0.2}) + "\n"
        )
        return types.SimpleNamespace(
            epochs_run=2,
            best_epoch=2,
            train_sequences_per_second=10.0,
            valid={"hr@10": 0.2},
            test={"hr@10": 0.3},
        )

    monkeypatch.setattr(train, "fit", fake_fit)
    monkeypatch.setattr(data.SequenceDataset, "load", staticmethod(lambda path: None))
    job = _job(tmp_path)
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "step-000001.pt").write_bytes(b"")  # an interrupted run's checkpoint (by name)
    first = BENCH_MODULE._run(job)
    assert calls == [True]
    assert first["resumed"] is True
    assert first["valid_curve"] == [{"epoch": 2, "hr@10": 0.2}]
    assert json.loads((tmp_path / "run" / BENCH_MODULE.RUN_RECORD).read_text())["test"] == {"hr@10": 0.3}
    again = BENCH_MODULE._run(job)
    assert calls == [True]  # not trained a second time
    assert again["reused"] is True
