"""``mol-train``: data download and preparation, training, evaluation and bundle export.

    mol-train data download ml-1m --dest raw/
    mol-train data prepare raw/ml-1m/ratings.dat --format movielens-dat --output prepared/ml-1m
    mol-train data synthetic --output prepared/synthetic
    mol-train fit --config ml1m_hstu_large_mol --data prepared/ml-1m --output runs/ml1m-mol
    torchrun --nproc_per_node 2 -m mol_train.cli fit --config tiny_cpu --data prepared/synth --output runs/x
    mol-train eval --run runs/ml1m-mol --data prepared/ml-1m
    mol-train export --run runs/ml1m-mol --data prepared/ml-1m --output bundles/ml1m-mol

Every command returns 0 on success and 2 on a bad input (the message says what was wrong).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mol_core.errors import MolError

__all__ = ["main"]

logger = logging.getLogger("mol_train")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mol-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="download or prepare data sets").add_subparsers(
        dest="data_command", required=True
    )
    download = data.add_parser("download", help="download a public data set from its official address")
    download.add_argument("name", help="ml-100k, ml-1m, ml-20m or amazon-books")
    download.add_argument("--dest", type=Path, required=True, help="folder to download and unpack into")
    download.add_argument("--url", help="a mirror serving the same file (default: the official address)")
    download.add_argument("--overwrite", action="store_true", help="download again if already present")

    prepare = data.add_parser("prepare", help="raw ratings file -> prepared sequences + vocabulary")
    prepare.add_argument("source", type=Path, help="the raw file (ratings.dat, ratings.csv, u.data, ...)")
    prepare.add_argument(
        "--format",
        required=True,
        help="movielens-dat (UserID::MovieID::Rating::Timestamp), movielens-csv (ML-20M ratings.csv), "
        "movielens-100k (u.data), amazon-csv (user,item,rating,timestamp) or user-item "
        "('user item' per line, chronological)",
    )
    prepare.add_argument("--output", type=Path, required=True, help="the prepared directory to create")
    prepare.add_argument(
        "--max-len", type=int, help="most recent items kept per user (200 MovieLens, 50 Amazon)"
    )
    prepare.add_argument("--core", type=int, help="k-core filter (default 5 for amazon-csv, none otherwise)")
    prepare.add_argument("--overwrite", action="store_true", help="replace an existing output directory")

    synthetic = data.add_parser("synthetic", help="generate a data set with planted sequential structure")
    synthetic.add_argument("--output", type=Path, required=True, help="the prepared directory to create")
    synthetic.add_argument("--users", type=int, default=2000, help="number of users (default 2000)")
    synthetic.add_argument("--items", type=int, default=1000, help="number of items (default 1000)")
    synthetic.add_argument("--max-len", type=int, default=50, help="longest history (default 50)")
    synthetic.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synthetic.add_argument("--overwrite", action="store_true", help="replace an existing output directory")

    fit = commands.add_parser("fit", help="train a model (run under torchrun for several processes)")
    fit.add_argument("--config", required=True, help="a preset name (see mol-train presets) or a .toml file")
    fit.add_argument("--data", type=Path, help="prepared data directory (overrides data.path)")
    fit.add_argument("--output", type=Path, required=True, help="run directory: logs, checkpoints, results")
    fit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )
    fit.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    fit.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")
    fit.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per process (default 0: the CPUs this process may use, from its affinity "
        "mask and cgroup quota, divided among torchrun's local processes)",
    )

    presets = commands.add_parser("presets", help="list the shipped config presets")
    presets.add_argument("--show", help="print one preset's TOML")

    evaluate = commands.add_parser("eval", help="evaluate a run's best model over the full corpus")
    evaluate.add_argument("--run", type=Path, required=True, help="a run directory written by fit")
    evaluate.add_argument("--data", type=Path, required=True, help="the prepared data directory")
    evaluate.add_argument("--split", nargs="+", default=["valid", "test"], help="splits (default valid test)")
    evaluate.add_argument("--weights", type=Path, help="a checkpoint to evaluate (default RUN/best.pt)")

    export = commands.add_parser("export", help="write a model bundle from a run's best model")
    export.add_argument("--run", type=Path, required=True, help="a run directory written by fit")
    export.add_argument("--data", type=Path, required=True, help="the prepared data directory (vocabulary)")
    export.add_argument("--output", type=Path, required=True, help="the bundle directory to create")
    export.add_argument("--name", default="", help="model name stored in the manifest")
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    export.add_argument(
        "--index",
        type=Path,
        help="also write the index of the model's jointly trained index layer ([index] kind pq or "
        "hierarchical) to this directory: codes / clusters straight from the trained layer, no k-means",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return _run(args)
    except (MolError, OSError) as err:  # bad input: a config, a data file, an artifact, a path
        print(f"mol-train {args.command}: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "data":
        return _data(args)
    if args.command == "presets":
        return _presets(args)
    if args.command == "fit":
        return _fit(args)
    if args.command == "eval":
        return _eval(args)
    return _export(args)


def _data(args: argparse.Namespace) -> int:
    from mol_train.data import download, make_synthetic, prepare

    if args.data_command == "download":
        path = download(args.name, args.dest, url=args.url, overwrite=args.overwrite)
        print(f"downloaded {args.name}: {path}")
    elif args.data_command == "prepare":
        dataset = prepare(
            args.source,
            args.format,
            args.output,
            max_len=args.max_len,
            core=args.core,
            overwrite=args.overwrite,
        )
        print(f"prepared {args.output}: {dataset.num_users} users, {dataset.num_items} items")
    else:
        if args.output.exists() and not args.overwrite:
            from mol_core.errors import ConfigError

            raise ConfigError(f"{args.output} already exists; pass --overwrite to replace it")
        dataset = make_synthetic(
            num_users=args.users, num_items=args.items, max_len=args.max_len, seed=args.seed
        )
        dataset.save(args.output)
        print(f"generated {args.output}: {dataset.num_users} users, {dataset.num_items} items")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from importlib import resources

    from mol_train.config import list_presets, load_config

    if args.show:
        load_config(args.show)  # validates the name
        print((resources.files("mol_train") / "configs" / f"{args.show}.toml").read_text(), end="")
    else:
        print("\n".join(list_presets()))
    return 0


def _load_dataset(path: Path) -> object:
    from mol_train.data import SequenceDataset, make_synthetic

    if str(path) == "synthetic":
        return make_synthetic()
    return SequenceDataset.load(path)


def _fit(args: argparse.Namespace) -> int:
    from mol_core.errors import ConfigError
    from mol_train.config import load_config
    from mol_train.threads import set_torch_threads
    from mol_train.train import fit

    set_torch_threads(args.threads)
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.append(f"data.path={json.dumps(str(args.data))}")
    config = load_config(args.config, overrides)
    if not config.data.path:
        raise ConfigError("no data set: pass --data <prepared directory> (or set data.path)")
    dataset = _load_dataset(Path(config.data.path))
    result = fit(
        config,
        dataset,  # type: ignore[arg-type]
        args.output,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    print(_report(result.valid, result.test))
    print(
        f"best epoch {result.best_epoch} of {result.epochs_run}, {result.wall_seconds:.0f}s, "
        f"{result.train_sequences_per_second:.0f} training sequences/s; outputs in {result.out_dir}"
    )
    return 0


def _restore(run: Path, data: Path, weights: Path | None) -> tuple[object, object, object]:
    from mol_train.train import restore_encoder

    dataset = _load_dataset(data)
    config, encoder = restore_encoder(run, dataset.num_items, weights=weights)  # type: ignore[attr-defined]
    return config, dataset, encoder


def _eval(args: argparse.Namespace) -> int:
    from mol_train.evaluate import evaluate_encoder

    config, dataset, encoder = _restore(args.run, args.data, args.weights)
    max_len = config.data.max_len  # type: ignore[attr-defined]
    results = {
        split: evaluate_encoder(encoder, dataset, split, max_len=max_len)  # type: ignore[arg-type]
        for split in args.split
    }
    print(json.dumps(results, indent=2, sort_keys=True))
    return 0


def _export(args: argparse.Namespace) -> int:
    from mol_train.export import export_bundle

    config, dataset, encoder = _restore(args.run, args.data, None)
    path = export_bundle(
        encoder,  # type: ignore[arg-type]
        list(dataset.item_vocab),  # type: ignore[attr-defined]
        args.output,
        max_len=config.data.max_len,  # type: ignore[attr-defined]
        use_timestamps=dataset.timestamps is not None,  # type: ignore[attr-defined]
        model_name=args.name,
        architecture=config.model.encoder.value,  # type: ignore[attr-defined]
        overwrite=args.overwrite,
    )
    print(f"exported {path}")
    if args.index is not None:
        _export_index(path, args.index, overwrite=args.overwrite)
    return 0


def _export_index(bundle: Path, destination: Path, *, overwrite: bool) -> None:
    """Writes the index of the bundle's trained index layer (mol-index's build --kind pq|hierarchical)."""
    from mol_core.errors import ConfigError

    try:
        from mol_index import build_from_bundle, build_hierarchical, build_pq
        from mol_index.layers import layer_from_bundle
    except ImportError as err:
        raise ConfigError(f"--index needs mol-index: pip install 'mol-train[index]' ({err})") from err
    index = build_from_bundle(bundle)
    layer = layer_from_bundle(bundle, index.similarity)
    if layer is None:
        raise ConfigError(
            "--index: the model has no jointly trained index layer ([index] kind = 'none'); build an index "
            f"with mol-index build --bundle {bundle} instead"
        )
    build = build_pq if layer.kind == "pq" else build_hierarchical
    index = build(index, layer=layer)  # type: ignore[arg-type]
    written = index.save(destination, overwrite=overwrite)
    print(f"wrote the {index.kind} index of the trained layer ({index.num_items} items) to {written}")


def _report(valid: dict[str, float], test: dict[str, float]) -> str:
    keys = ["hr@1", "hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr"]
    lines = [f"{'split':<6} " + " ".join(f"{k:>8}" for k in keys)]
    for name, metrics in (("valid", valid), ("test", test)):
        lines.append(f"{name:<6} " + " ".join(f"{metrics[k]:>8.4f}" for k in keys))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
