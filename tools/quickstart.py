"""mol's main job, end to end on a CPU: data, train, evaluate, export, index, serve, query, report.

    python3 -m pip install nox && python3 -m nox -s quickstart    # the README's command: installs, runs this
    python tools/quickstart.py [--workdir quickstart-run] [--data PATH] [--fresh]

Steps; each reuses its output when an earlier run left it complete, so running again only re-measures,
serves and queries (``--fresh`` starts over):

1. data     the embedded default: mol-train's synthetic generator with planted sequential structure
            (3,000 users, 1,000 items, leave-one-out); or ``--data``, a real file in a format mol-train
            reads (ratings.dat, ratings.csv, u.data, Amazon ratings CSV, "user item" text).
2. train    HSTU + MoL (preset ``quickstart_mol``) and the same encoder with a dot product
            (``quickstart_dot``), with progress bars; each evaluated over the full corpus on every user's
            held-out last item (history filtered).
3. export   the MoL model as a model bundle: exported query encoder, item tensors, vocabulary, manifest.
4. index    an exact index and an approximate one (FAISS HNSW candidates, CombTopK, exact MoL rerank).
5. measure  the exact index must reproduce the trained model's test HR@10 through the bundle; recall@10 of
            the approximate index against the exact one, and search latency at B = 1 and B = 32.
6. serve    ``mol-serve`` as a separate process on a loopback port, both indexes under aliases.
7. query    the Python client sends test users' histories; the served results must equal the in-process
            exact search, and the served HR@10 is reported.
8. report   quality, recall and latency, where the artifacts and plots are: printed and in report.md.

Exit code 0 when every check passed, 1 when one failed (the report says which), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from mol_core.atomic import write_text_atomically
from mol_core.bundle import ModelBundle, load_bundle
from mol_core.errors import MolError
from mol_core.manifest import MANIFEST_FILENAME, sha256_file
from mol_index import MolIndex, SearchParams, build_from_bundle
from mol_serve import RetrievalClient
from mol_train.config import load_config
from mol_train.data import DATASET_FILE, SequenceDataset, detect_format, make_synthetic, prepare
from mol_train.export import export_bundle
from mol_train.train import fit, restore_encoder

PRESETS = (("mol", "quickstart_mol"), ("dot", "quickstart_dot"))
QUALITY_KEYS = ("hr@1", "hr@10", "hr@50", "ndcg@10", "ndcg@50", "mrr")
APPROX = SearchParams(algorithm="comb_topk", k_prime=32, ef_search=64)


@dataclass
class Report:
    """What the run measured, for the printed and written report."""

    workdir: Path
    data: str = ""
    steps: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    search: dict[str, dict[str, float]] = field(default_factory=dict)
    served: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    curves: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TestQueries:
    """Every user's test query: the history without its last item, and that item (external ids)."""

    histories: list[list[int]]
    timestamps: list[list[int]] | None
    query_times: list[int] | None
    targets: list[int]

    def window(self, start: int, stop: int) -> dict[str, Any]:
        """Keyword arguments (histories, timestamps, query_times) of queries ``start:stop``."""
        found: dict[str, Any] = {"histories": self.histories[start:stop]}
        if self.timestamps is not None and self.query_times is not None:
            found |= {"timestamps": self.timestamps[start:stop], "query_times": self.query_times[start:stop]}
        return found


def run_step(report: Report, name: str, title: str, body: Callable[[], Any]) -> Any:
    """Runs ``body`` as step ``name``, printing its title and wall time; returns what it returns."""
    print(f"\n== {title}", flush=True)
    start = time.perf_counter()
    value = body()
    report.steps[name] = time.perf_counter() - start
    print(f"   ({report.steps[name]:.1f} s)", flush=True)
    return value


INPUTS_FILE = "inputs.json"


def requested_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """What this run's outputs depend on: the data (a file's path and SHA-256, or the synthetic sizes)
    and the epochs."""
    if args.data is not None:
        digest = sha256_file(args.data)
        data: dict[str, Any] = {"file": str(args.data.resolve()), "sha256": digest}
    else:
        data = {"synthetic": {"users": args.users, "items": args.items, "seed": 0}}
    return {"data": data, "epochs": args.epochs}


def check_inputs(workdir: Path, wanted: dict[str, Any]) -> tuple[str, str]:
    """Makes ``workdir`` ready for ``wanted``: ``(error, note)``.

    A workdir that recorded the same inputs is reused. One that recorded other inputs is emptied and
    rebuilt (the note says from what to what); nothing built from other inputs is reused silently. A
    non-empty folder that records no inputs is not the quickstart's: it is refused (the error says so).
    The inputs are recorded in ``inputs.json`` before anything is built.
    """
    record = workdir / INPUTS_FILE
    note = ""
    if record.is_file():
        found = json.loads(record.read_text())
        if found == wanted:
            return "", ""
        note = (
            f"{workdir} was built from {json.dumps(found)}; the requested inputs are {json.dumps(wanted)}, "
            "so it is rebuilt"
        )
        shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
    elif any(workdir.iterdir()):
        return f"{workdir} is not empty and records no inputs; pass --fresh or choose another --workdir", ""
    write_text_atomically(record, json.dumps(wanted, indent=2, sort_keys=True))
    return "", note


def build_data(args: argparse.Namespace, report: Report) -> SequenceDataset:
    target = report.workdir / "data"
    if (target / DATASET_FILE).is_file():
        report.reused.append("data")
        print(f"   reusing the data set in {target}")
        return SequenceDataset.load(target)
    if args.data is not None:
        print(f"   preparing {args.data} ({detect_format(args.data)})")
        return prepare(args.data, detect_format(args.data), target)
    dataset = make_synthetic(num_users=args.users, num_items=args.items, max_len=50, seed=0)
    tmp = report.workdir / ".data.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dataset.save(tmp / DATASET_FILE)
    tmp.rename(target)
    print(
        f"   generated {dataset.num_users} users x {dataset.num_items} items (synthetic, planted structure)"
    )
    return dataset


def train(name: str, preset: str, dataset: SequenceDataset, args: argparse.Namespace, report: Report) -> None:
    run = report.workdir / "runs" / name
    results = run / "results.json"
    if results.is_file():
        report.reused.append(f"train {name}")
        print(f"   reusing the trained {name} model in {run}")
    else:
        overrides = [] if args.epochs is None else [f"train.epochs={args.epochs}"]
        resume = any((run / "checkpoints").glob("step-*.pt"))
        print(f"   {preset}{' (resuming)' if resume else ''}")
        fit(load_config(preset, overrides), dataset, run, resume=resume, progress=True)
    found = json.loads(results.read_text())
    report.quality[name] = {key: float(found["test"][key]) for key in QUALITY_KEYS}
    report.quality[name]["epochs"] = float(found["epochs_run"])
    report.quality[name]["best_epoch"] = float(found["best_epoch"])
    report.curves[name] = validation_curve_status(run / "metrics.jsonl")
    report.artifacts[f"{name} run (metrics.jsonl, curves.png)"] = run


def validation_curve_status(metrics_file: Path) -> str:
    """Says whether a run's validation NDCG@10 was still rising when training stopped.

    "still rising" when the last evaluation was the best so far, "flat" otherwise, with the epochs.
    """
    curve = [
        (record["epoch"], record["ndcg@10"])
        for record in map(json.loads, metrics_file.read_text().splitlines())
        if record.get("kind") == "valid"
    ]
    if not curve:
        return "no validation run"
    best_epoch, _ = max(curve, key=lambda point: point[1])
    last_epoch = curve[-1][0]
    if best_epoch == last_epoch:
        return f"still rising at epoch {last_epoch} (its best): more epochs would likely change the result"
    return f"best at epoch {best_epoch} of {last_epoch}"


def export(dataset: SequenceDataset, report: Report) -> Path:
    bundle_dir = report.workdir / "bundle"
    if (bundle_dir / MANIFEST_FILENAME).is_file():
        report.reused.append("export")
        print(f"   reusing the bundle in {bundle_dir}")
        return bundle_dir
    config, encoder = restore_encoder(report.workdir / "runs" / "mol", dataset.num_items)
    export_bundle(
        encoder,
        list(dataset.item_vocab),
        bundle_dir,
        max_len=config.data.max_len,
        use_timestamps=dataset.timestamps is not None,
        model_name="quickstart HSTU + MoL",
        architecture=config.model.encoder.value,
    )
    print(f"   exported {bundle_dir}")
    return bundle_dir


def build_indexes(bundle_dir: Path, report: Report) -> dict[str, Path]:
    paths = {"exact": report.workdir / "index-exact", "approx": report.workdir / "index-hnsw"}
    for alias, stage in (("exact", "torch"), ("approx", "hnsw")):
        if (paths[alias] / MANIFEST_FILENAME).is_file():
            report.reused.append(f"index {alias}")
            print(f"   reusing {paths[alias]}")
            continue
        index = build_from_bundle(bundle_dir, stage=stage)
        index.save(paths[alias])
        print(f"   built {index.kind} index of {index.num_items} items at {paths[alias]}")
    return paths


def held_out_queries(dataset: SequenceDataset, max_len: int) -> TestQueries:
    """Every user's test query with the ``max_len`` most recent history items, as training evaluates."""
    vocab = dataset.item_vocab
    histories, times, query_times, targets = [], [], [], []
    for user in range(dataset.num_users):
        start, stop = int(dataset.offsets[user]), int(dataset.offsets[user + 1])
        items = [int(vocab[i - 1]) for i in dataset.items[start:stop]]
        histories.append(items[:-1][-max_len:])
        targets.append(items[-1])
        if dataset.timestamps is not None:
            stamps = [int(t) for t in dataset.timestamps[start:stop]]
            times.append(stamps[:-1][-max_len:])
            query_times.append(stamps[-1])  # as in training's evaluation: the held-out item's time
    if dataset.timestamps is None:
        return TestQueries(histories, None, None, targets)
    return TestQueries(histories, times, query_times, targets)


def hit_rate(ids: list[list[int]], targets: list[int], k: int = 10) -> float:
    return sum(t in row[:k] for row, t in zip(ids, targets, strict=True)) / len(targets)


def latency_ms(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(
    bundle: ModelBundle, paths: dict[str, Path], queries: TestQueries, report: Report
) -> list[list[int]]:
    """Searches every test query in process; returns the exact top-10 ids with the history excluded.

    Two exclusions: the evaluation protocol's (the history, except the held-out item when the user saw it
    before; mol_core.metrics ranks the target even when seen), which must reproduce the trained model's
    test HR@10 through the exported bundle and the index; and serving's (the whole history, as
    ``exclude_history`` does), used for everything else.
    """
    exact, approx = MolIndex.load(paths["exact"]), MolIndex.load(paths["approx"])
    exact_params = SearchParams(algorithm="exact")
    protocol_ids: list[list[int]] = []
    exact_ids: list[list[int]] = []
    approx_ids: list[list[int]] = []
    for start in range(0, len(queries.targets), 256):
        window = queries.window(start, start + 256)
        histories, targets = window["histories"], queries.targets[start : start + 256]
        with torch.inference_mode():
            query = bundle.encode(**window)
        protocol = [[i for i in h if i != t] for h, t in zip(histories, targets, strict=True)]
        protocol_ids += exact.search(query, 10, exclude=protocol, params=exact_params)[1].tolist()
        exact_ids += exact.search(query, 10, exclude=histories, params=exact_params)[1].tolist()
        approx_ids += approx.search(query, 10, exclude=histories, params=APPROX)[1].tolist()
    recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_ids, exact_ids, strict=True)]))
    with torch.inference_mode():
        q32, q1 = bundle.encode(**queries.window(0, 32)), bundle.encode(**queries.window(0, 1))
    for name, index, params, ids in (
        ("exact", exact, exact_params, exact_ids),
        ("approx", approx, APPROX, approx_ids),
    ):
        report.search[name] = {
            "hr@10": hit_rate(ids, queries.targets),
            "recall@10": 1.0 if name == "exact" else recall,
            "p50_ms_b1": latency_ms(lambda i=index, p=params: i.search(q1, 10, params=p), 50),
            "p50_ms_b32": latency_ms(lambda i=index, p=params: i.search(q32, 10, params=p), 10),
        }
    trained, reproduced = report.quality["mol"]["hr@10"], hit_rate(protocol_ids, queries.targets)
    report.search["protocol"] = {"hr@10": reproduced}
    report.checks["bundle + exact index reproduce the trained model's test HR@10 (within 0.005)"] = (
        abs(reproduced - trained) <= 0.005
    )
    print(
        f"   test HR@10 through bundle + exact index {reproduced:.4f} (trained model: {trained:.4f}); "
        f"approximate recall@10 {recall:.4f} against exact"
    )
    return exact_ids


def start_server(
    bundle_dir: Path, paths: dict[str, Path], workdir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port_file, log = workdir / "server.port.json", workdir / "server.log"
    port_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "mol_serve",
        "--log-level",
        "WARNING",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--bundle",
        str(bundle_dir),
        "--index",
        f"exact={paths['exact']}",
        "--index",
        f"approx={paths['approx']}",
        "--default-alias",
        "exact",
        "--torch-threads",
        "1",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if port_file.is_file():
            return process, int(json.loads(port_file.read_text())["port"])
        if process.poll() is not None:
            raise MolError(
                f"mol-serve exited with {process.returncode}; see {log}:\n{log.read_text()[-2000:]}"
            )
        time.sleep(0.1)
    process.kill()
    raise MolError(f"mol-serve did not start within 120 s; see {log}")


def stop_server(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=10)
    return int(process.returncode)


def serve_and_query(
    bundle_dir: Path, paths: dict[str, Path], queries: TestQueries, exact_ids: list[list[int]], report: Report
) -> None:
    process, port = start_server(bundle_dir, paths, report.workdir)
    target = f"127.0.0.1:{port}"
    print(f"   mol-serve listening on {target} (pid {process.pid})")
    try:
        with RetrievalClient(target, timeout=60) as client:
            health = client.health()
            users = min(512, len(queries.targets))
            served: list[list[int]] = []
            for start in range(0, users, 16):
                result = client.retrieve(
                    **queries.window(start, min(start + 16, users)),
                    top_k=10,
                    exclude_history=True,
                    index_alias="exact",
                )
                served += result.ids
            approx = client.retrieve(
                **queries.window(0, 16),
                top_k=10,
                exclude_history=True,
                index_alias="approx",
                algorithm="comb_topk",
                params={"k_prime": APPROX.k_prime, "ef_search": APPROX.ef_search},
            )
            one = {**queries.window(0, 1), "top_k": 10, "exclude_history": True}
            grpc_ms = latency_ms(lambda: client.retrieve(**one), 50)
            sample = client.retrieve(**one)
    finally:
        code = stop_server(process)
    report.served = {
        "target": target,
        "health": health,
        "users": users,
        "hr@10": hit_rate(served, queries.targets[:users]),
        "p50_ms_b1": grpc_ms,
        "index_version": sample.index_version,
        "approx_version": approx.index_version,
        "sample_history": queries.histories[0][-8:],
        "sample_ids": sample.ids[0][:5],
        "sample_scores": [round(s, 3) for s in sample.scores[0][:5]],
        "exit_code": code,
    }
    report.checks["server answers SERVING on the health service"] = health == "SERVING"
    report.checks["served results equal the in-process exact search"] = served == exact_ids[:users]
    report.checks["server shuts down cleanly on SIGTERM"] = code == 0
    same = served == exact_ids[:users]
    print(f"   {users} users queried over gRPC; results identical to in-process search: {same}")


def render(report: Report) -> str:
    mol, dot = report.quality["mol"], report.quality["dot"]
    lines = [
        "# mol quickstart report",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.platform()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads); data: "
        f"{report.data}.",
        "",
        "## Quality: test split, full corpus, history filtered",
        "",
        "| model | epochs | " + " | ".join(QUALITY_KEYS) + " |",
        "|---|---|" + "---|" * len(QUALITY_KEYS),
    ]
    for name, label in (("mol", "HSTU + MoL"), ("dot", "HSTU + dot product")):
        q = report.quality[name]
        lines.append(
            f"| {label} | {q['epochs']:.0f} | " + " | ".join(f"{q[k]:.4f}" for k in QUALITY_KEYS) + " |"
        )
    gain = (mol["hr@10"] / dot["hr@10"] - 1) * 100 if dot["hr@10"] > 0 else float("nan")
    lines += [
        "",
        f"MoL vs dot product, HR@10: {gain:+.1f}% after {mol['epochs']:.0f} and {dot['epochs']:.0f} epochs, "
        "one seed each: a single run on small synthetic data, not evidence that one head is better "
        "(docs/benchmarks.md has the multi-seed comparison on ML-1M).",
        "",
        "Validation curves (NDCG@10): "
        + "; ".join(
            f"{label}: {report.curves.get(name, 'unknown')}"
            for name, label in (("mol", "MoL"), ("dot", "dot product"))
        )
        + ".",
        "",
        "## Indexes (in process, every test user; latency = median wall time per search, 1 thread)",
        "",
        f"The exported bundle and the exact index give test HR@10 {report.search['protocol']['hr@10']:.4f} "
        "under the evaluation protocol (history filtered, the held-out item ranked even when seen before). "
        "Below, as served, the whole history is excluded (`exclude_history`), so items a user repeats "
        "cannot be hits and HR@10 is lower.",
        "",
        "| index | algorithm | HR@10 | recall@10 vs exact | p50 B=1 (ms) | p50 B=32 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for name, label, algo in (
        ("exact", "exact (torch stage)", "exact"),
        ("approx", "faiss-hnsw", f"comb_topk, K'={APPROX.k_prime}"),
    ):
        s = report.search[name]
        lines.append(
            f"| {label} | {algo} | {s['hr@10']:.4f} | {s['recall@10']:.4f} | {s['p50_ms_b1']:.2f} | "
            f"{s['p50_ms_b32']:.2f} |"
        )
    if report.search["approx"]["p50_ms_b1"] >= report.search["exact"]["p50_ms_b1"]:
        lines += [
            "",
            "At this corpus size exact search is already cheap, so the approximate index is not faster; "
            "RAILS pays off on large corpora (docs/benchmarks.md, mol-index: 1e5 and 1e6 items).",
        ]
    served = report.served
    lines += [
        "",
        "## Served over gRPC",
        "",
        f"mol-serve on {served['target']}: health {served['health']}, index {served['index_version']} "
        f"(approximate: {served['approx_version']}); {served['users']} test users, served HR@10 "
        f"{served['hr@10']:.4f}; end-to-end p50 at B=1 {served['p50_ms_b1']:.2f} ms (history encoded on "
        "the server).",
        f"Example: history ...{served['sample_history']} -> top-5 {served['sample_ids']} "
        f"(scores {served['sample_scores']}).",
        "",
        "## Checks",
        "",
        *[f"- [{'x' if ok else ' '}] {name}" for name, ok in report.checks.items()],
        "",
        "## Steps (wall seconds)",
        "",
        ", ".join(f"{name} {seconds:.1f}" for name, seconds in report.steps.items())
        + f"; total {sum(report.steps.values()):.1f}."
        + (f" Reused from an earlier run: {', '.join(report.reused)}." if report.reused else ""),
        "",
        "## Artifacts",
        "",
        *[f"- {name}: `{path}`" for name, path in report.artifacts.items()],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="quickstart", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path("quickstart-run"), help="outputs (default ./quickstart-run)"
    )
    parser.add_argument("--data", type=Path, help="a real data file instead of the synthetic default")
    parser.add_argument("--fresh", action="store_true", help="delete --workdir first and rebuild everything")
    parser.add_argument("--users", type=int, default=3000, help="synthetic users (default 3000)")
    parser.add_argument("--items", type=int, default=1000, help="synthetic items (default 1000)")
    parser.add_argument("--epochs", type=int, help="epochs per model (default: the presets', 8)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for training (default 1: the models are small, and on a shared 2-core machine "
        "more threads can be many times slower); searches are timed single-threaded, as in mol-index's "
        "benchmark",
    )
    args = parser.parse_args(argv)
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    if min(args.users, args.items) < 20 or (args.epochs is not None and args.epochs < 1):
        parser.error("--users and --items must be at least 20 and --epochs at least 1")
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(1)
    if args.fresh:
        shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    mismatch, rebuilt = check_inputs(args.workdir, requested_inputs(args))
    if mismatch:
        print(f"quickstart: error: {mismatch}", file=sys.stderr)
        return 2
    if rebuilt:
        print(f"quickstart: {rebuilt}")
    report = Report(args.workdir.resolve())
    try:
        dataset = run_step(report, "data", "1/8 data", lambda: build_data(args, report))
        report.data = f"{dataset.name or 'data'}, {dataset.num_users} users x {dataset.num_items} items"
        run_step(
            report,
            "train",
            "2/8 train HSTU + MoL and HSTU + dot product",
            lambda: [train(n, p, dataset, args, report) for n, p in PRESETS],
        )
        bundle_dir = run_step(report, "export", "3/8 export the MoL bundle", lambda: export(dataset, report))
        paths = run_step(
            report,
            "index",
            "4/8 build an exact and an approximate index",
            lambda: build_indexes(bundle_dir, report),
        )
        torch.set_num_threads(1)  # search latencies are single-threaded CPU numbers
        bundle = load_bundle(bundle_dir)
        queries = held_out_queries(dataset, bundle.max_len)
        exact_ids = run_step(
            report,
            "measure",
            "5/8 measure quality, recall and latency in process",
            lambda: measure(bundle, paths, queries, report),
        )
        run_step(
            report,
            "serve",
            "6-7/8 serve over gRPC and query with the client",
            lambda: serve_and_query(bundle_dir, paths, queries, exact_ids, report),
        )
    except MolError as err:
        print(f"quickstart: error: {err}", file=sys.stderr)
        return 1
    report.artifacts |= {
        "data": report.workdir / "data",
        "bundle": bundle_dir,
        **{f"index {a}": p for a, p in paths.items()},
    }
    text = render(report)
    out = report.workdir / "report.md"
    write_text_atomically(out, text)
    print("\n== 8/8 report (also in " + str(out) + ")\n\n" + text)
    failed = [name for name, ok in report.checks.items() if not ok]
    if failed:
        print(f"quickstart: FAILED checks: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
