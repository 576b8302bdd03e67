"""The JSONL metrics log survives a cut-off last line, and the curves render to a PNG."""

from __future__ import annotations

from pathlib import Path

from mol_train.run_log import MetricsLog, plot_training_curves, read_metrics_log


def test_log_round_trip_and_truncated_last_line(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    log.write({"kind": "train", "epoch": 1, "loss": 4.0})
    log.write({"kind": "valid", "epoch": 1, "hr@10": 0.1, "ndcg@10": 0.05})
    with log.path.open("a") as handle:
        handle.write('{"kind": "train", "epo')  # a crash mid-line
    assert read_metrics_log(log.path) == [
        {"kind": "train", "epoch": 1, "loss": 4.0},
        {"kind": "valid", "epoch": 1, "hr@10": 0.1, "ndcg@10": 0.05},
    ]


def test_curves_are_a_png(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for epoch in range(1, 4):
        log.write({"kind": "train", "epoch": epoch, "loss": 5.0 / epoch})
        log.write({"kind": "valid", "epoch": epoch, "hr@10": 0.1 * epoch, "ndcg@10": 0.05 * epoch})
    png = plot_training_curves(log.path, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_run_title_names_the_model() -> None:
    from mol_train.config import load_config
    from mol_train.train import run_title

    overrides = ["model.num_blocks=2", "data.max_len=50", "train.seed=3", "train.epochs=32"]
    mol = load_config("ml1m_hstu_large_mol", [*overrides, "data.path='prepared/ml-1m'"])
    assert run_title(mol, Path("runs/mol-a")) == (
        "mol-a: hstu (2 blocks, max_len 50) + MoL 8x4x64, seed 3, 32 epochs on ml-1m"
    )
    dot = load_config("ml1m_hstu_large_dot")
    assert "+ dot product" in run_title(dot, Path("runs/dot"))
    assert run_title(load_config("tiny_cpu", ["data.path=''"]), Path("r")).endswith("on data in memory")
