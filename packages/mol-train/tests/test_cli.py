"""mol-train CLI: every command end to end at a tiny size, and bad inputs exit 2 with a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mol_core.bundle import load_bundle
from mol_train.cli import main


def test_synthetic_fit_eval_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, run, bundle = tmp_path / "data", tmp_path / "run", tmp_path / "bundle"
    assert (
        main(
            ["data", "synthetic", "--output", str(data), "--users", "120", "--items", "40", "--max-len", "12"]
        )
        == 0
    )
    fit_args = ["fit", "--config", "tiny_cpu", "--data", str(data), "--output", str(run), "--no-progress"]
    assert main([*fit_args, "--set", "train.epochs=1", "--set", "data.max_len=12"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out
    assert "training sequences/s" in out
    assert main(["eval", "--run", str(run), "--data", str(data), "--split", "test"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["test"]["hr@10"] <= 1.0
    assert metrics["test"]["count"] == 120
    assert main(["export", "--run", str(run), "--data", str(data), "--output", str(bundle)]) == 0
    assert load_bundle(bundle).items.embeddings.shape[0] == 40
    # --index needs a model trained with an index layer
    other = ["export", "--run", str(run), "--data", str(data), "--output", str(tmp_path / "b2")]
    assert main([*other, "--index", str(tmp_path / "index")]) == 2
    assert "no jointly trained index layer" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


def test_export_writes_the_pq_index_of_a_jointly_trained_layer(tmp_path: Path) -> None:
    pytest.importorskip("mol_index")
    from mol_index import MolIndex

    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["data", "synthetic", "--output", str(data), "--users", "120", "--items", "40"]) == 0
    pq = ["--set", "index.kind=pq", "--set", "index.subspaces=2", "--set", "index.codebook_size=8"]
    fit_args = ["fit", "--config", "tiny_cpu", "--data", str(data), "--output", str(run), "--no-progress"]
    assert main([*fit_args, "--set", "train.epochs=1", "--set", "index.warmup_steps=1", *pq]) == 0
    export = ["export", "--run", str(run), "--data", str(data), "--output", str(tmp_path / "bundle")]
    assert main([*export, "--index", str(tmp_path / "index")]) == 0
    index = MolIndex.load(tmp_path / "index")
    assert index.kind == "pq"
    assert index.pq is not None
    assert index.pq.source == "joint"


def test_presets_are_listed_and_shown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    assert "ml1m_hstu_large_mol" in capsys.readouterr().out
    assert main(["presets", "--show", "tiny_cpu"]) == 0
    assert capsys.readouterr().out.startswith("# mol-train fit --config tiny_cpu")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "--config", "nope", "--output", "x"], "unknown preset 'nope'"),
        (["fit", "--config", "tiny_cpu", "--output", "x", "--set", "train.epoch=2"], "valid keys"),
        (["eval", "--run", "missing-run", "--data", "synthetic"], "not a run directory"),
        (["data", "prepare", "missing.dat", "--format", "movielens-dat", "--output", "out"], "missing.dat"),
        (["data", "prepare", "x", "--format", "csv", "--output", "out"], "unknown data format"),
        (["data", "download", "imagenet", "--dest", "d"], "unknown data set"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in capsys.readouterr().err
