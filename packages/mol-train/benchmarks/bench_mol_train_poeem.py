r"""Poeem: a PQ index trained jointly with the model against FAISS PQ and OPQ + IVF-PQ built after training.

    python packages/mol-train/benchmarks/bench_mol_train_poeem.py --quick --output bench-results/poeem.json
    python packages/mol-train/benchmarks/bench_mol_train_poeem.py --output bench-results/poeem.json \
        --ml1m ../shared/data/ml-1m --epochs 20

For each similarity (dot product, MoL) two models are trained on the same data for the same epochs:

- **baseline**: no index layer; after training, FAISS ``PQ{M}`` and ``OPQ{M},IVF{C},PQ{M}`` are trained and
  filled on its item component embeddings (``M`` bytes per component, plus the IVF list id).
- **joint**: ``[index] kind = "pq"`` with ``C`` coarse centroids, ``M`` subspaces of 256 codewords and a
  learned rotation, warm-started by k-means after ``--warmup-epochs`` and trained with the model; its codes
  are written by assigning every item with the trained layer (``mol_index.search.pq.encode_corpus``, no
  k-means). FAISS PQ and OPQ + IVF-PQ on the joint model's own embeddings are also reported, which tells
  the codebooks' share of the gain from the embeddings' share.

Each index is measured as Poeem's tutorial measures it (precision@100 .9805 joint vs .9610 FAISS built
after training, brute force .9989): by the ground truth, with brute force as the reference. For every test
query (every user's held-out last item, full history), the items are ranked by the similarity on the
decoded (quantized) item side, history filtered as in mol-train's evaluation, and **recall@100** is the
share of held-out items in the top 100 (HR@10 likewise). For the dot product this is the FAISS ranking
itself (asymmetric distance); for MoL the decoded component embeddings are scored with the model's own MoL
(gating features are not quantized). **overlap@100** is the other measure: the share of each model's exact
top 100 (its raw item embeddings, nothing filtered) that the index's top 100 keeps. For the joint model the
raw embeddings are a latent: after the warm start it trained, and is evaluated, on its quantized items, so
overlap with their ranking is not what its index is for. Build time is what turns trained embeddings into
codes: FAISS training + adding, or the joint layer's encoding.

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

from mol_core.metrics import RankingMetrics
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index.evaluation import machine, write_result
from mol_index.search.exact import exact_search
from mol_index.search.pq import encode_corpus
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
        "model_test_hr@10": saved["test"]["hr@10"],  # mol-train's own evaluation (through a warm layer)
    }
    return encoder, info


def _same_run(saved: TrainConfig, wanted: TrainConfig) -> bool:
    """Equal configs; the ``[index]`` settings do not matter when neither run has an index layer."""
    if saved.index.kind == wanted.index.kind == "none":
        saved = dataclasses.replace(saved, index=wanted.index)
    return saved == wanted


@dataclasses.dataclass
class _TestQueries:
    """Every user's test query (history up to the held-out last item) and what recall is measured on."""

    query: QuerySide  # (U, Pq, d)
    targets: torch.Tensor  # (U,) column of the held-out item
    seen: torch.Tensor  # (U, L) columns of the history (filtered from rankings), padded with -1


@torch.no_grad()
def _queries(encoder: QueryEncoder, dataset: SequenceDataset, max_len: int) -> _TestQueries:
    parts, targets, seen = [], [], []
    for start in range(0, dataset.num_users, 512):
        rows = list(range(start, min(start + 512, dataset.num_users)))
        batch = eval_batch(dataset, rows, "test", max_len=max_len)
        parts.append(encoder(batch.history, batch.timestamps, batch.target_timestamps, batch.user_rows))
        targets.append(batch.target_columns())
        seen.append(batch.seen())
    gating = None if parts[0].gating is None else torch.cat([p.gating for p in parts])  # type: ignore[misc]
    return _TestQueries(
        QuerySide(torch.cat([p.embeddings for p in parts]), gating), torch.cat(targets), torch.cat(seen)
    )


@torch.no_grad()
def _top(similarity: Similarity, query: QuerySide, items: ItemSide) -> torch.Tensor:
    """``(U, K)`` rows of the K best items by the similarity on ``items`` (nothing excluded)."""
    return exact_search(similarity, query, items, K)[1]


def _overlap(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.numel()


@torch.no_grad()
def _held_out_recall(similarity: Similarity, test: _TestQueries, items: ItemSide) -> dict[str, float]:
    """Recall@100 and HR@10 of the held-out items when ``items`` are ranked (history filtered; ties count
    against the held-out item)."""
    metrics = RankingMetrics(ks=(10, K))
    for start in range(0, test.query.batch_size, 512):
        stop = start + 512
        gating = None if test.query.gating is None else test.query.gating[start:stop]
        scores = similarity.score_corpus(QuerySide(test.query.embeddings[start:stop], gating), items)
        metrics.update(scores, test.targets[start:stop], seen=test.seen[start:stop])
    result = metrics.compute()
    return {"recall@100": result[f"hr@{K}"], "hr@10": result["hr@10"]}


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
        test = _queries(encoder, dataset, max_len)
        exact_top = _top(similarity, test.query, corpus)
        n, px, d = corpus.embeddings.shape
        methods: dict[str, tuple[torch.Tensor, float, int]] = {
            "brute force": (corpus.embeddings, 0.0, 32 * d)
        }
        for name, factory in factories.items():
            decoded, seconds = _faiss_decoded(factory, corpus.embeddings.reshape(-1, d).float())
            bits_used = m * bits + (0 if name == plain else coarse_bits)
            methods[name] = (decoded.view(n, px, d), seconds, bits_used)
        if encoder.index_layer is not None:
            start = time.perf_counter()
            codes = encode_corpus(encoder.index_layer, corpus)  # type: ignore[arg-type]
            seconds = time.perf_counter() - start
            with torch.no_grad():
                methods["joint PQ (Poeem)"] = (codes.decode(0, n), seconds, m * bits + coarse_bits)
        for name, (decoded, seconds, bits_used) in methods.items():
            items = ItemSide(decoded.to(corpus.embeddings.dtype), corpus.gating)
            rows.append(
                {
                    "similarity": label,
                    "model": model_name,
                    "index": name,
                    **_held_out_recall(similarity, test, items),
                    "overlap@100": _overlap(_top(similarity, test.query, items), exact_top),
                    "build_seconds": seconds,
                    "bits_per_component": bits_used,
                    "num_items": n,
                    "num_queries": test.query.batch_size,
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
    ax.set_ylabel("recall@100 of the held-out item")
    low, high = min(r["recall@100"] for r in rows), max(r["recall@100"] for r in rows)
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.08))  # room for the legend above the bars
    ax.set_title("PQ trained with the model (Poeem) vs FAISS PQ / OPQ+IVF-PQ after training")
    ax.legend(fontsize=8, loc="upper center", ncol=len(indexes))
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
        f"{'sim':<4} {'model':<9} {'index':<28} {'R@100':>7} {'HR@10':>7} {'overlap':>7} {'build s':>8} "
        f"{'bits':>5} {'epochs':>6}"
    )
    for r in rows:
        print(
            f"{r['similarity']:<4} {r['model']:<9} {r['index']:<28} {r['recall@100']:>7.4f} "
            f"{r['hr@10']:>7.4f} {r['overlap@100']:>7.4f} {r['build_seconds']:>8.3f} "
            f"{r['bits_per_component']:>5} {r['epochs_run']:>6}"
        )
    if args.output:
        write_result(result, args.output)
    if args.plot:
        _plot(rows, args.plot)
    bad = [r for r in rows if not all(0.0 <= r[key] <= 1.0 for key in ("recall@100", "hr@10", "overlap@100"))]
    if bad or not rows:
        print("FAIL: recall out of range or nothing measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
