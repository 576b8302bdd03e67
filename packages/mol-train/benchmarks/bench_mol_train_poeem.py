"""Poeem: a PQ index trained jointly with the model against FAISS PQ and OPQ + IVF-PQ built after training.

    python packages/mol-train/benchmarks/bench_mol_train_poeem.py --quick --output bench-results/poeem.json
    python packages/mol-train/benchmarks/bench_mol_train_poeem.py --output bench-results/poeem.json \\
        --ml1m ../shared/data/ml-1m --epochs 20

For each similarity (dot product, MoL) two models are trained on the same data for the same epochs:

- **baseline**: no index layer; after training, FAISS ``PQ{M}`` and ``OPQ{M},IVF{C},PQ{M}`` are trained and
  filled on its item component embeddings (``M`` bytes per component, plus the IVF list id).
- **joint**: ``[index] kind = "pq"`` with ``C`` coarse centroids, ``M`` subspaces of 256 codewords and a
  learned rotation, warm-started by k-means after ``--warmup-epochs`` and trained with the model; its codes
  are written by assigning every item with the trained layer (``mol_index.pq_index.encode_corpus``, no
  k-means). FAISS PQ and OPQ + IVF-PQ on the joint model's own embeddings are also reported, which tells
  the codebooks' share of the gain from the embeddings' share.

Recall@100 is measured per model against its own brute force: for every test query (the held-out last
item of every user, full history), the 100 items with the highest similarity on the decoded (quantized)
item side, against the 100 with the highest exact similarity; nothing is excluded. For the dot product this
is the FAISS ranking itself (asymmetric distance); for MoL the decoded component embeddings are scored with
the model's own MoL (gating features are not quantized). Build time is what turns trained embeddings into
codes: FAISS training + adding, or the joint layer's encoding. Test HR@10 / NDCG@10 of each model (exact
scoring) show what the joint training costs in model quality.

Quick mode (CI): a synthetic data set with planted structure, tiny models, 3 epochs; the 16-codeword
codebooks are smaller than the full mode's. It checks that everything runs and that recall is in [0, 1];
it does not require the joint index to win (too small to say). Full mode: ML-1M with SASRec.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index.bench import machine, write_result
from mol_index.exact import exact_search
from mol_index.pq_index import encode_corpus
from mol_train.config import TrainConfig, config_from_dict, load_config
from mol_train.data import SequenceDataset, eval_batch, make_synthetic, prepare
from mol_train.model import QueryEncoder
from mol_train.train import _jsonable, fit, restore_encoder

K = 100
JOINT_EXTRA: list[str] = []  # --joint-set overrides of the joint model's config


def _train(
    name: str, preset: str, overrides: list[str], dataset: SequenceDataset, out: Path
) -> tuple[QueryEncoder, dict[str, Any]]:
    config = load_config(preset, overrides)
    finished = out / name / "results.json"
    if finished.is_file() and _same_run(
        config_from_dict(json.loads((out / name / "config.json").read_text())), config
    ):
        print(f"reusing the finished run {out / name} (same config)", file=sys.stderr)
        saved = json.loads(finished.read_text())
    else:
        result = fit(config, dataset, out / name, progress=False)
        saved = _jsonable(result)
    _, encoder = restore_encoder(out / name, dataset.num_items)
    info = {
        "epochs_run": saved["epochs_run"],
        "best_epoch": saved["best_epoch"],
        "train_seconds": saved["wall_seconds"],
        "test_hr@10": saved["test"]["hr@10"],
        "test_ndcg@10": saved["test"]["ndcg@10"],
    }
    return encoder, info


def _same_run(saved: TrainConfig, wanted: TrainConfig) -> bool:
    """Equal configs; the ``[index]`` settings do not matter when neither run has an index layer."""
    if saved.index.kind == wanted.index.kind == "none":
        saved = dataclasses.replace(saved, index=wanted.index)
    return saved == wanted


@torch.no_grad()
def _queries(encoder: QueryEncoder, dataset: SequenceDataset, max_len: int) -> QuerySide:
    """The test query of every user (history up to the held-out last item)."""
    parts = []
    for start in range(0, dataset.num_users, 512):
        rows = list(range(start, min(start + 512, dataset.num_users)))
        batch = eval_batch(dataset, rows, "test", max_len=max_len)
        times = None if batch.target_timestamps is None else batch.target_timestamps
        parts.append(encoder(batch.history, batch.timestamps, times, batch.user_rows))
    gating = None if parts[0].gating is None else torch.cat([p.gating for p in parts])  # type: ignore[misc]
    return QuerySide(torch.cat([p.embeddings for p in parts]), gating)


@torch.no_grad()
def _top(similarity: Similarity, query: QuerySide, items: ItemSide) -> torch.Tensor:
    """``(B, K)`` rows of the K best items by the similarity on ``items``."""
    return exact_search(similarity, query, items, K)[1]


def _recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.numel()


def _faiss_decoded(factory: str, vectors: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Trains a FAISS index of ``factory`` on ``vectors (n, d)``, adds them, and returns what their codes
    decode to and the train + add seconds."""
    import faiss

    x = np.ascontiguousarray(vectors.numpy(), dtype=np.float32)
    start = time.perf_counter()
    index = faiss.index_factory(x.shape[1], factory)
    index.train(x)
    codes = index.sa_encode(x)
    index.add(x)
    seconds = time.perf_counter() - start
    return torch.from_numpy(index.sa_decode(codes)), seconds


def _compare(
    label: str,
    preset: str,
    common: list[str],
    pq: dict[str, int],
    warmup_steps: int,
    dataset: SequenceDataset,
    out: Path,
    max_len: int,
) -> list[dict[str, Any]]:
    index_overrides = [
        "index.kind='pq'",
        f"index.warmup_steps={warmup_steps}",
        f"index.coarse={pq['coarse']}",
        f"index.subspaces={pq['subspaces']}",
        f"index.codebook_size={pq['codebook_size']}",
        *JOINT_EXTRA,
    ]
    baseline, base_info = _train(f"{label}-baseline", preset, common, dataset, out)
    joint, joint_info = _train(f"{label}-joint", preset, [*common, *index_overrides], dataset, out)
    m, c = pq["subspaces"], pq["coarse"]
    bits = int(np.log2(pq["codebook_size"]))
    coarse_bits = (c - 1).bit_length()  # the coarse centroid / IVF list id
    plain = f"FAISS PQ{m}x{bits}"
    factories = {
        plain: f"PQ{m}x{bits}",
        f"FAISS OPQ{m},IVF{c},PQ{m}x{bits}": f"OPQ{m},IVF{c},PQ{m}x{bits}",
    }
    rows = []
    for model_name, encoder, info in (("baseline", baseline, base_info), ("joint", joint, joint_info)):
        similarity = encoder.similarity.eval()
        with torch.no_grad():
            corpus = similarity.item_side(encoder.item_table[1:])  # (N, Px, d)
        query = _queries(encoder, dataset, max_len)
        truth = _top(similarity, query, corpus)
        n, px, d = corpus.embeddings.shape
        methods: dict[str, tuple[torch.Tensor, float]] = {}
        for name, factory in factories.items():
            decoded, seconds = _faiss_decoded(factory, corpus.embeddings.reshape(-1, d).float())
            methods[name] = (decoded.view(n, px, d), seconds)
        if encoder.index_layer is not None:
            start = time.perf_counter()
            codes = encode_corpus(encoder.index_layer, corpus)  # type: ignore[arg-type]
            seconds = time.perf_counter() - start
            with torch.no_grad():
                methods["joint PQ (Poeem)"] = (codes.decode(0, n), seconds)
        for name, (decoded, seconds) in methods.items():
            found = _top(similarity, query, ItemSide(decoded.to(corpus.embeddings.dtype), corpus.gating))
            rows.append(
                {
                    "similarity": label,
                    "model": model_name,
                    "index": name,
                    "recall@100": _recall(found, truth),
                    "build_seconds": seconds,
                    "bits_per_component": m * bits + (0 if name == plain else coarse_bits),
                    "num_items": n,
                    "num_queries": query.batch_size,
                    **info,
                }
            )
    return rows


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: recall@100 of every index, per similarity and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["similarity"], r["model"]) for r in rows}, key=lambda g: (g[0], g[1]))
    indexes = list(dict.fromkeys(r["index"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(indexes)
    for i, name in enumerate(indexes):
        values = [
            next(
                (r["recall@100"] for r in rows if (r["similarity"], r["model"]) == g and r["index"] == name),
                0,
            )
            for g in groups
        ]
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{sim}: {model} model" for sim, model in groups])
    ax.set_ylabel("recall@100 against brute force")
    ax.set_ylim(min(0.5, min(r["recall@100"] for r in rows) - 0.05), 1.0)
    ax.set_title("PQ trained with the model (Poeem) vs FAISS PQ / OPQ+IVF-PQ after training")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="synthetic data, tiny models (CI)")
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path")
    parser.add_argument(
        "--ml1m",
        type=Path,
        default=Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ml-1m",
        help="folder with ML-1M's user_movie_chrono.txt (default ../shared/data/ml-1m)",
    )
    parser.add_argument("--epochs", type=int, default=20, help="epochs per ML-1M model (default 20)")
    parser.add_argument("--warmup-epochs", type=int, default=5, help="unquantized epochs first (default 5)")
    parser.add_argument("--similarities", default="dot,mol", help="which to run: dot, mol or dot,mol")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where runs are written (default: a temporary folder); a finished run found there with the "
        "same config is reused, not retrained",
    )
    parser.add_argument("--plot", type=Path, help="draw recall@100 per model and index into this PNG")
    parser.add_argument(
        "--joint-set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="config override for the joint model only, e.g. --joint-set index.ema_decay=0 (repeatable)",
    )
    args = parser.parse_args(argv)
    JOINT_EXTRA[:] = args.joint_set
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = set(args.similarities.split(","))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.workdir or Path(tmp)
        if args.quick:
            dataset = make_synthetic(num_users=600, num_items=300, max_len=20, seed=0)
            max_len, steps_per_epoch = 20, -(-600 // 32)
            common = [
                "train.epochs=3",
                "data.max_len=20",
                "model.item_dim=16",
                "train.early_stopping_patience=0",
            ]
            pq = {"coarse": 4, "subspaces": 4, "codebook_size": 16}
            mol = ["similarity.component_dim=8"]
            presets = {
                "dot": ("tiny_cpu", [*common, "similarity.kind='dot'"]),
                "mol": ("tiny_cpu", [*common, *mol]),
            }
            warmup = steps_per_epoch
        else:
            source = args.ml1m / "user_movie_chrono.txt"
            if not source.is_file():
                print(f"ML-1M not found at {source}: nothing measured", file=sys.stderr)
                return 2
            dataset = prepare(source, "user-item", out / "ml-1m", max_len=200, overwrite=True)
            max_len, steps_per_epoch = 200, -(-dataset.num_users // 128)
            common = [
                f"train.epochs={args.epochs}",
                "train.eval_every=1",
                "train.early_stopping_patience=0",
                "model.item_dim=64",
            ]
            pq = {"coarse": 16, "subspaces": 8, "codebook_size": 256}
            mol = [
                "similarity.kind='mol'",
                "similarity.query_components=4",
                "similarity.item_components=2",
                "similarity.component_dim=32",
                "similarity.gating_hidden_dim=64",
                "train.mi_weight=0.001",
            ]
            presets = {"dot": ("ml1m_sasrec_dot", common), "mol": ("ml1m_sasrec_dot", [*common, *mol])}
            warmup = args.warmup_epochs * steps_per_epoch
        for label in ("dot", "mol"):
            if label in wanted:
                preset, overrides = presets[label]
                rows += _compare(label, preset, overrides, pq, warmup, dataset, out, max_len)
    result = {
        "benchmark": "mol_train_poeem",
        "mode": "quick" if args.quick else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "pq": pq,
        "warmup_steps": warmup,
        "joint_overrides": args.joint_set,
        "rows": rows,
    }
    print(f"Poeem vs post-hoc PQ ({result['mode']}), {result['machine']}")
    print(
        f"{'sim':<4} {'model':<9} {'index':<28} {'R@100':>7} {'build s':>8} {'bits':>5} "
        f"{'HR@10':>7} {'epochs':>6}"
    )
    for r in rows:
        print(
            f"{r['similarity']:<4} {r['model']:<9} {r['index']:<28} {r['recall@100']:>7.4f} "
            f"{r['build_seconds']:>8.3f} {r['bits_per_component']:>5} {r['test_hr@10']:>7.4f} "
            f"{r['epochs_run']:>6}"
        )
    if args.output:
        write_result(result, args.output)
    if args.plot:
        _plot(rows, args.plot)
    bad = [r for r in rows if not 0.0 <= r["recall@100"] <= 1.0]
    if bad or not rows:
        print("FAIL: recall out of range or nothing measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
