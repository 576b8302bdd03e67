r"""mol-train benchmarks: training throughput, peak memory, and ML-1M quality with the paper's protocol.

    python packages/mol-train/benchmarks/bench_mol_train.py --quick --output bench-results/mol_train.json
    python packages/mol-train/benchmarks/bench_mol_train.py --output bench-results/mol_train.json \
        --ml1m ../shared/data/ml-1m --epochs 100 --time-budget 0

Quick mode (CI): a synthetic data set with planted structure and the ``tiny_cpu`` preset, MoL and dot
product, two epochs each; it checks that both learn (test HR@10 above chance) and reports training
sequences per second and peak RSS. Full mode adds ML-1M (``user_movie_chrono.txt`` from the given folder,
leave-one-out, full-corpus ranking, history filtered) with the paper's HSTU-large + MoL preset and the
same with a dot product, trained in the same run, each for ``--epochs`` epochs or until ``--time-budget``
seconds of training (whichever comes first; early stopping as in the preset). Every number printed is
measured in this run; the epochs each model actually got are recorded next to its metrics.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mol_train.config import load_config
from mol_train.data import SequenceDataset, make_synthetic, prepare
from mol_train.train import fit

PAPER = {"hr@10": 0.3412, "ndcg@10": 0.1979}  # HSTU-large + MoL on ML-1M (mission.md)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


EXTRA: list[str] = []  # --set overrides, applied after each run's own (so they win)


def run_one(
    name: str, preset: str, dataset: SequenceDataset, overrides: list[str], out: Path
) -> dict[str, Any]:
    overrides = [*overrides, *EXTRA]
    config = load_config(preset, overrides)
    start = time.perf_counter()
    result = fit(config, dataset, out / name, progress=False)
    return {
        "model": name,
        "preset": preset,
        "overrides": overrides,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "wall_seconds": time.perf_counter() - start,
        "train_sequences_per_second": result.train_sequences_per_second,
        "valid": result.valid,
        "test": result.test,
        "peak_rss_mb": peak_rss_mb(),
    }


def quick(out: Path) -> list[dict[str, Any]]:
    dataset = make_synthetic(num_users=1000, num_items=300, max_len=20, seed=0)
    common = ["train.epochs=2", "data.max_len=20"]
    return [
        run_one("synthetic tiny MoL", "tiny_cpu", dataset, common, out),
        run_one("synthetic tiny dot", "tiny_cpu", dataset, [*common, "similarity.kind='dot'"], out),
    ]


def full(out: Path, ml1m: Path, epochs: int, time_budget: float) -> list[dict[str, Any]]:
    rows = quick(out)
    source = ml1m / "user_movie_chrono.txt"
    if not source.is_file():
        print(f"ML-1M not found at {source}: ML-1M rows not measured", file=sys.stderr)
        return rows
    dataset = prepare(source, "user-item", out / "ml-1m", max_len=200, overwrite=True)
    overrides = [f"train.epochs={epochs}", f"train.time_budget_seconds={time_budget}"]
    for name, preset in (
        ("ML-1M HSTU-large + MoL", "ml1m_hstu_large_mol"),
        ("ML-1M HSTU-large + dot", "ml1m_hstu_large_dot"),
    ):
        rows.append(run_one(name, preset, dataset, overrides, out))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="synthetic data only, 2 epochs (CI)")
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path")
    parser.add_argument(
        "--ml1m",
        type=Path,
        default=Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ml-1m",
        help="folder with ML-1M's user_movie_chrono.txt (default ../shared/data/ml-1m)",
    )
    parser.add_argument("--epochs", type=int, default=100, help="epochs per ML-1M model (default 100)")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="stop each ML-1M model after this many seconds of training (0 = no limit)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--workdir", type=Path, help="where runs are written (default: a temporary folder)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="config override applied to every run, e.g. --set train.shared_negatives=true (repeatable)",
    )
    args = parser.parse_args(argv)
    EXTRA[:] = args.overrides
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.workdir or Path(tmp)
        rows = quick(out) if args.quick else full(out, args.ml1m, args.epochs, args.time_budget)
    result = {
        "benchmark": "mol_train",
        "mode": "quick" if args.quick else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "paper_hstu_large_mol_ml1m": PAPER,
        "overrides": args.overrides,
        "rows": rows,
    }
    print(f"mol-train ({result['mode']}), {result['machine']}")
    header = ["epochs", "seq/s", "HR@10", "NDCG@10", "HR@50", "HR@200", "MRR", "RSS MB"]
    print(f"{'model':<26} " + " ".join(f"{h:>8}" for h in header))
    for row in rows:
        t = row["test"]
        cells = [f"{row['epochs_run']:>8}", f"{row['train_sequences_per_second']:>8.0f}"]
        cells += [f"{t[k]:>8.4f}" for k in ("hr@10", "ndcg@10", "hr@50", "hr@200", "mrr")]
        print(f"{row['model']:<26} " + " ".join(cells) + f" {row['peak_rss_mb']:>8.0f}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = args.output.with_suffix(".tmp")
        tmp_path.write_text(json.dumps(result, indent=2))
        tmp_path.replace(args.output)
    failures = [
        row["model"]
        for row in rows
        if row["model"].startswith("synthetic") and row["test"]["hr@10"] <= 10 / 300
    ]
    if failures:
        print(f"FAIL: no better than chance on the planted synthetic task: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
