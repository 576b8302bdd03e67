r"""MoL against the dot product on real data: several seeds, equal epochs or an equal wall-clock budget.

    # the record (docs/benchmarks.md): ML-1M, HSTU with 2 blocks, max_len 50, 32 epochs, 3 seeds each
    python packages/mol-train/benchmarks/bench_mol_train_quality.py --data ml-1m --seeds 0 1 2 \
        --epochs 32 --eval-every 4 --jobs 2 --output bench-results/mol_train_quality_ml1m.json
    # the same models at an equal wall-clock budget of training (seconds per run)
    python packages/mol-train/benchmarks/bench_mol_train_quality.py --data ml-1m --time-budget 1800 ...
    # the ablation table: the MoL preset without one element of the recipe each (ABLATIONS), 1 seed
    python packages/mol-train/benchmarks/bench_mol_train_quality.py --data ml-1m --seeds 0 --models mol \
        --ablation no_layer_norm --ablation no_swiglu ... --output bench-results/mol_train_ablations.json
    # CI's quick mode: ML-100K, 1 epoch, 1 seed, a short history
    python packages/mol-train/benchmarks/bench_mol_train_quality.py --quick

Both models use the same presets (``ml1m_hstu_large_mol`` / ``ml1m_hstu_large_dot``: the reference
recipe and the reference's own dot-product baseline) shrunk by the same ``--scale`` overrides, the same
data, seeds, epochs and negatives. Each run is one process with one torch thread (``--jobs`` run side by
side). Every run keeps its best epoch by validation NDCG@10 (no early stopping); the table gives the mean
and sample standard deviation over seeds of that model's validation and test metrics, and the mean
validation curve per evaluated epoch, so a curve still rising is visible. Every number is measured in
this run. The run fails if a model's test HR@10 is not above 1.5x that of a random ranking.

With ``--workdir``, an interrupted benchmark can be run again with the same command: finished runs are
reused from their ``run.json``, interrupted ones resume from their newest checkpoint (written at every
evaluation), and more seeds can be added to a finished workdir the same way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
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

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
PRESETS = {"mol": "ml1m_hstu_large_mol", "dot": "ml1m_hstu_large_dot"}
#: The default scale: HSTU-large's width with 2 blocks and the last 50 items, so that 3 seeds of both
#: models fit in about 1.5 hours on 2 CPU cores.
SCALE = ["model.num_blocks=2", "data.max_len=50"]
METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "mrr")
#: Ablations of the MoL preset, one element of the reference recipe each (docs/mol-train-recipe.md):
#: ``--ablation NAME`` adds the model ``mol-NAME``, the MoL preset with these overrides.
ABLATIONS: dict[str, list[str]] = {
    "no_layer_norm": ["similarity.query_layer_norm=false"],
    "no_swiglu": ["similarity.query_hidden_dim=0"],
    "torch_init": ["similarity.init='torch'"],
    "user_projected": ["similarity.user_direct=false", "similarity.user_dropout=0.0"],
    "no_user": ["similarity.user_components=0", "model.user_buckets=0", "train.user_l2_weight=0.0"],
    "no_user_l2": ["train.user_l2_weight=0.0"],
    "no_item_dropout": ["similarity.item_dropout=0.0"],
    "adam_clip": ["train.weight_decay=0.0", "train.adam_beta2=0.999", "train.grad_clip=1.0"],
    "fp32_gating": ["train.gating_bf16=false"],
    "per_position": ["train.negatives='per_position'"],
}


def _prepared(name: str, root: Path, workdir: Path, max_len: int) -> Path:
    """Prepares ML-1M (user_movie_chrono.txt) or ML-100K (u.data) once into ``workdir``."""
    from mol_train.data import prepare

    sources = {"ml-1m": ("user_movie_chrono.txt", "user-item"), "ml-100k": ("u.data", "movielens-100k")}
    file, fmt = sources[name]
    source = root / name / file
    if not source.is_file():
        raise SystemExit(f"{source} not found: give --data-root, the folder holding {name}/{file}")
    out = workdir / f"{name}-L{max_len}"
    if not (out / "info.json").is_file():
        prepare(source, fmt, out, max_len=max_len, overwrite=True)
    return out


#: Each finished run's record, in its own folder: a later invocation with the same ``--workdir`` reuses it.
RUN_RECORD = "run.json"


def _run(job: dict[str, Any]) -> dict[str, Any]:
    """One training run in its own process with one torch thread.

    A run whose folder already holds its record (:data:`RUN_RECORD`) of the same model, seed, preset and
    overrides is not trained again; one whose folder holds checkpoints of an interrupted run resumes from
    the newest (``fit(resume=True)``: the continued run is the run it replaced).
    """
    out = Path(job["out"])
    identity = {k: job[k] for k in ("model", "seed", "preset", "overrides")}
    record_path = out / RUN_RECORD
    if record_path.is_file():
        record: dict[str, Any] = json.loads(record_path.read_text())
        if {k: record.get(k) for k in identity} != identity:
            raise SystemExit(
                f"{record_path} records another run ({record.get('model')}, seed {record.get('seed')}, "
                f"overrides {record.get('overrides')}); expected {identity}: give another --workdir"
            )
        return {**record, "reused": True}
    torch.set_num_threads(1)
    from mol_train.checkpoint import find_checkpoints
    from mol_train.config import load_config
    from mol_train.data import SequenceDataset
    from mol_train.train import fit

    dataset = SequenceDataset.load(job["data"])
    config = load_config(job["preset"], job["overrides"])
    resume = bool(find_checkpoints(out / "checkpoints"))
    start = time.perf_counter()
    result = fit(config, dataset, out, progress=False, resume=resume)
    curve = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("kind") == "valid":
            curve.append({"epoch": entry["epoch"], **{k: entry[k] for k in METRICS if k in entry}})
    record = {
        **identity,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "wall_seconds": time.perf_counter() - start,
        "resumed": resume,
        "train_sequences_per_second": result.train_sequences_per_second,
        "valid": result.valid,
        "test": result.test,
        "valid_curve": curve,
    }
    write_text_atomically(record_path, json.dumps(record, indent=2))
    return record


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds per model, and the mean validation curve."""
    out: dict[str, Any] = {}
    for model in sorted({r["model"] for r in runs}):
        mine = [r for r in runs if r["model"] == model]
        row: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for split in ("valid", "test"):
            for metric in METRICS:
                values = [r[split][metric] for r in mine]
                row[f"{split} {metric}"] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "values": values,
                }
        epochs = sorted({p["epoch"] for r in mine for p in r["valid_curve"]})
        row["valid_curve"] = [
            {
                "epoch": e,
                **{
                    m: statistics.fmean(p[m] for r in mine for p in r["valid_curve"] if p["epoch"] == e)
                    for m in ("hr@10", "ndcg@10")
                },
            }
            for e in epochs
        ]
        row["epochs_run"] = [r["epochs_run"] for r in mine]
        row["best_epoch"] = [r["best_epoch"] for r in mine]
        row["train_sequences_per_second"] = statistics.fmean(r["train_sequences_per_second"] for r in mine)
        out[model] = row
    return out


def verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """MoL minus dot per metric, and whether the gap exceeds the larger of the two seed spreads (standard
    deviations) either way."""
    if not {"mol", "dot"} <= set(summary):
        return {}
    result = {}
    for key in ("valid hr@10", "valid ndcg@10", "test hr@10", "test ndcg@10", "test hr@50"):
        mol, dot = summary["mol"][key], summary["dot"][key]
        gap = mol["mean"] - dot["mean"]
        spread = max(mol["std"], dot["std"])
        if min(len(summary["mol"]["seeds"]), len(summary["dot"]["seeds"])) < 2:  # no spread to compare with
            result[key] = {
                "mol_minus_dot": gap,
                "spread": spread,
                "mol_wins": False,
                "dot_wins": False,
                "single_seed": True,
            }
            continue
        result[key] = {
            "mol_minus_dot": gap,
            "spread": spread,
            "mol_wins": gap > spread,
            "dot_wins": -gap > spread,
        }
    return result


def _verdict_word(v: dict[str, Any]) -> str:
    if v["mol_wins"]:
        return "MoL ahead by more than the seed spread"
    if v.get("dot_wins"):
        return "dot ahead by more than the seed spread"
    if v.get("single_seed"):
        return "one seed, no spread to compare with"
    return "within the seed spread"


def _print(result: dict[str, Any]) -> None:
    print(f"mol-train quality ({result['mode']}), {result['machine']}")
    header = ["valid HR@10", "valid NDCG@10", "test HR@10", "test NDCG@10", "test HR@50", "seq/s"]
    print(f"{'model':<6} " + " ".join(f"{h:>17}" for h in header))
    for model, row in result["summary"].items():
        cells = [
            f"{row[k]['mean']:.4f} ± {row[k]['std']:.4f}"
            for k in ("valid hr@10", "valid ndcg@10", "test hr@10", "test ndcg@10", "test hr@50")
        ]
        cells.append(f"{row['train_sequences_per_second']:.1f}")
        print(f"{model:<6} " + " ".join(f"{c:>17}" for c in cells))
        curve = " ".join(f"{p['epoch']}:{p['hr@10']:.4f}" for p in row["valid_curve"])
        print(f"       mean valid HR@10 by epoch: {curve}")
    for key, v in result["verdict"].items():
        print(f"{key}: MoL - dot = {v['mol_minus_dot']:+.4f} (spread {v['spread']:.4f}): {_verdict_word(v)}")


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result over the runs of several result files of the same protocol (runs of other seeds).

    Raises:
        ValueError: the files differ in data or in any protocol setting other than the seeds, or two of
            them hold the same (model, seed) run.
    """
    first = results[0]
    same = {k: v for k, v in first["protocol"].items() if k != "seeds"}
    runs: list[dict[str, Any]] = []
    for result in results:
        protocol = {k: v for k, v in result["protocol"].items() if k != "seeds"}
        if result["data"] != first["data"] or protocol != same:
            raise ValueError(
                f"result files of different protocols cannot be merged: {result['data']} {protocol} "
                f"against {first['data']} {same}"
            )
        runs.extend(result["runs"])
    pairs = [(r["model"], r["seed"]) for r in runs]
    repeated = sorted({p for p in pairs if pairs.count(p) > 1})
    if repeated:
        raise ValueError(f"the same (model, seed) run is in more than one file: {repeated}")
    if len(results) == 1:
        return first
    summary = summarize(runs)
    seeds = sorted({r["seed"] for r in runs})
    return {**first, "protocol": {**first["protocol"], "seeds": seeds}, "runs": runs, "summary": summary}


def markdown(result: dict[str, Any]) -> str:
    """The summary as the Markdown table docs/benchmarks.md records (``--markdown RESULT.json``)."""
    keys = ("valid hr@10", "valid ndcg@10", "test hr@10", "test ndcg@10", "test hr@50", "test ndcg@50")
    lines = [
        "| model | seeds | epochs run | best epochs | " + " | ".join(keys) + " | train seq/s |",
        "|---|---|---|---|" + "---|" * len(keys) + "---|",
    ]
    for model, row in result["summary"].items():
        cells = [f"{row[k]['mean']:.4f} ± {row[k]['std']:.4f}" for k in keys]
        epochs = ", ".join(map(str, row["epochs_run"]))
        best = ", ".join(map(str, row["best_epoch"]))
        lines.append(
            f"| {model} | {len(row['seeds'])} | {epochs} | {best} | "
            + " | ".join(cells)
            + f" | {row['train_sequences_per_second']:.1f} |"
        )
    lines.append("")
    for model, row in result["summary"].items():
        curve = ", ".join(f"{p['epoch']}: {p['hr@10']:.4f}" for p in row["valid_curve"])
        lines.append(f"Mean validation HR@10 by epoch, {model}: {curve}.")
    for key, v in verdict(result["summary"]).items():
        lines.append(
            f"- {key}: MoL - dot = {v['mol_minus_dot']:+.4f}, spread {v['spread']:.4f}: {_verdict_word(v)}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="ML-100K, 1 epoch, 1 seed, max_len 20 (CI)")
    parser.add_argument("--data", choices=("ml-1m", "ml-100k"), default="ml-1m", help="the data set")
    parser.add_argument("--data-root", type=Path, default=DATA, help="folder holding ml-1m/ and ml-100k/")
    parser.add_argument(
        "--models",
        nargs="*",
        choices=sorted(PRESETS),
        default=["mol", "dot"],
        help="the presets to train (none: only the --ablation models)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="train.seed of each run")
    parser.add_argument("--epochs", type=int, default=16, help="epochs per run (equal for every model)")
    parser.add_argument("--eval-every", type=int, default=2, help="epochs between validation runs")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="seconds of training per run instead of equal epochs (then --epochs is an upper bound)",
    )
    parser.add_argument(
        "--scale",
        nargs="*",
        default=SCALE,
        metavar="TABLE.KEY=VALUE",
        help=f"overrides that shrink both presets alike (default: {' '.join(SCALE)})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="a further override for every run (repeatable), e.g. --set train.negatives=per_sequence",
    )
    parser.add_argument(
        "--set-mol",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="an override for the MoL runs only (an ablation)",
    )
    parser.add_argument(
        "--ablation",
        dest="ablations",
        action="append",
        default=[],
        choices=sorted(ABLATIONS),
        help="also train the MoL preset without one element of the recipe, as model mol-NAME (repeatable)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    parser.add_argument("--workdir", type=Path, help="where runs are written (default: a temporary folder)")
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path")
    parser.add_argument(
        "--markdown",
        type=Path,
        nargs="+",
        metavar="RESULT.json",
        help="print the Markdown summary of earlier result files and exit; several files of the same "
        "protocol (data and every setting but the seeds) are summarised as one run over all their seeds",
    )
    args = parser.parse_args(argv)
    if not args.models and not args.ablations:
        parser.error("nothing to train: give --models and/or --ablation")
    if args.markdown is not None:
        results = []
        for path in args.markdown:
            try:
                loaded = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                parser.error(f"{path}: not a readable JSON result file ({err})")
            missing = [
                key
                for key in ("data", "protocol", "runs")
                if not isinstance(loaded, dict) or key not in loaded
            ]
            if missing:
                parser.error(f"{path}: not a result of this benchmark (no {', '.join(missing)})")
            results.append(loaded)
        try:
            print(markdown(merge_results(results)))
        except ValueError as err:
            parser.error(str(err))
        return 0
    if args.quick:
        args.data, args.seeds, args.epochs, args.eval_every = "ml-100k", [0], 1, 1
        args.scale = ["model.num_blocks=1", "data.max_len=20", "train.num_negatives=32"]
    max_len = next((int(s.split("=")[1]) for s in args.scale if s.startswith("data.max_len=")), 200)
    if not (args.data_root / args.data).is_dir():
        print(f"{args.data_root / args.data} not found: quality benchmark not measured", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        data = _prepared(args.data, args.data_root, workdir, max_len)
        num_items = _num_items(data)
        common = [
            *args.scale,
            f"train.epochs={args.epochs}",
            f"train.eval_every={args.eval_every}",
            "train.early_stopping_patience=0",
            f"train.time_budget_seconds={args.time_budget}",
            *args.overrides,
        ]
        models = {model: (PRESETS[model], args.set_mol if model == "mol" else []) for model in args.models}
        for name in args.ablations:
            models[f"mol-{name}"] = (PRESETS["mol"], [*args.set_mol, *ABLATIONS[name]])
        jobs = [
            {
                "model": model,
                "seed": seed,
                "preset": preset,
                "overrides": [*common, *extra, f"train.seed={seed}"],
                "data": str(data),
                "out": str(workdir / f"{args.data}-{model}-seed{seed}"),
            }
            for seed in args.seeds
            for model, (preset, extra) in models.items()
        ]
        context = multiprocessing.get_context("spawn")
        with context.Pool(max(1, args.jobs), maxtasksperchild=1) as pool:
            runs = pool.map(_run, jobs, chunksize=1)
    summary = summarize(runs)
    result = {
        "benchmark": "mol_train_quality",
        "mode": "quick" if args.quick else "full",
        "data": args.data,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads_per_run": 1,
            "runs_side_by_side": args.jobs,
        },
        "protocol": {
            "epochs": args.epochs,
            "eval_every": args.eval_every,
            "time_budget_seconds": args.time_budget,
            "scale": args.scale,
            "overrides": args.overrides,
            "mol_overrides": args.set_mol,
            "ablations": {name: ABLATIONS[name] for name in args.ablations},
            "seeds": args.seeds,
        },
        "runs": runs,
        "summary": summary,
        "verdict": verdict(summary),
    }
    _print(result)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.output, json.dumps(result, indent=2))
    chance = 10 / num_items  # HR@10 of a random ranking of the N items
    weak = [r["model"] for r in runs if r["test"]["hr@10"] <= 1.5 * chance]
    if weak:
        print(f"FAIL: test HR@10 not above 1.5x chance ({chance:.4f}) for {weak}", file=sys.stderr)
        return 1
    return 0


def _num_items(data: Path) -> int:
    from mol_train.data import SequenceDataset

    return SequenceDataset.load(data).num_items


if __name__ == "__main__":
    raise SystemExit(main())
