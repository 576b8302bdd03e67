"""The main job (tools/quickstart.py) at a small size: every step runs, every check passes, a rerun reuses.

Needs all four packages (the nox test session installs them); skipped otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

for name in ("mol_train", "mol_index", "mol_serve"):
    pytest.importorskip(name, reason="the quickstart needs every mol package (nox -s test installs them)")

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "quickstart.py"
SMALL = ["--users", "150", "--items", "60", "--epochs", "1"]


def run_quickstart(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--workdir", str(workdir), *SMALL, *extra],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_quickstart_runs_end_to_end_and_reuses_its_artifacts(tmp_path: Path) -> None:
    first = run_quickstart(tmp_path / "run")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "- [ ]" not in report  # no failed check
    assert report.count("- [x]") == 4
    assert "one seed each" in report
    assert "Validation curves (NDCG@10): MoL: " in report
    for artifact in (
        "data",
        "bundle",
        "index-exact",
        "index-hnsw",
        "runs/mol/curves.png",
        "runs/dot/results.json",
    ):
        assert (tmp_path / "run" / artifact).exists(), artifact
    results = json.loads((tmp_path / "run" / "runs" / "mol" / "results.json").read_text())
    assert f"| HSTU + MoL | 1 | {results['test']['hr@1']:.4f} | {results['test']['hr@10']:.4f}" in report

    second = run_quickstart(tmp_path / "run")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert (
        "Reused from an earlier run: data, train mol, train dot, export, index exact, index approx"
        in (tmp_path / "run" / "report.md").read_text()
    )


def test_quickstart_refuses_a_missing_data_file(tmp_path: Path) -> None:
    result = run_quickstart(tmp_path / "run", "--data", str(tmp_path / "nope.dat"))
    assert result.returncode == 2
    assert "--data" in result.stderr
    assert "no such file" in result.stderr


def _quickstart_module():  # type: ignore[no-untyped-def]
    """tools/quickstart.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    quickstart = importlib.util.module_from_spec(spec)
    sys.modules["quickstart"] = quickstart  # its dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(quickstart)
    finally:
        del sys.modules["quickstart"]
    return quickstart


def test_a_workdir_built_from_other_inputs_is_rebuilt_not_reused(tmp_path: Path) -> None:
    """Another --data or --epochs than the workdir was built from: emptied, rebuilt, and said so."""
    quickstart = _quickstart_module()
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    recorded = {"data": {"synthetic": {"users": 150, "items": 60, "seed": 0}}, "epochs": 1}
    (run / "inputs.json").write_text(json.dumps(recorded))
    (run / "data" / "dataset.npz").write_bytes(b"built from the recorded inputs")
    assert quickstart.check_inputs(run, recorded) == ("", "")  # the same inputs: reused as it is
    assert (run / "data" / "dataset.npz").is_file()
    wanted = {"data": {"synthetic": {"users": 150, "items": 60, "seed": 0}}, "epochs": 3}
    error, note = quickstart.check_inputs(run, wanted)
    assert error == ""
    assert '"epochs": 1' in note
    assert '"epochs": 3' in note
    assert "rebuilt" in note
    assert sorted(p.name for p in run.iterdir()) == ["inputs.json"]  # nothing of the old build is left
    assert json.loads((run / "inputs.json").read_text()) == wanted
    unrecorded = tmp_path / "old"
    (unrecorded / "data").mkdir(parents=True)
    result = run_quickstart(unrecorded)
    assert result.returncode == 2
    assert "records no inputs" in result.stderr
    assert (unrecorded / "data").is_dir()  # a folder that is not the quickstart's is left alone


def test_the_report_says_when_a_validation_curve_is_still_rising(tmp_path: Path) -> None:
    quickstart = _quickstart_module()
    metrics = tmp_path / "metrics.jsonl"
    rising = [
        {"kind": "train", "epoch": 1},
        {"kind": "valid", "epoch": 1, "ndcg@10": 0.1},
        {"kind": "valid", "epoch": 2, "ndcg@10": 0.2},
    ]
    metrics.write_text("\n".join(json.dumps(r) for r in rising))
    assert quickstart.validation_curve_status(metrics).startswith("still rising at epoch 2")
    metrics.write_text(
        "\n".join(json.dumps(r) for r in [*rising, {"kind": "valid", "epoch": 3, "ndcg@10": 0.15}])
    )
    assert quickstart.validation_curve_status(metrics) == "best at epoch 2 of 3"
