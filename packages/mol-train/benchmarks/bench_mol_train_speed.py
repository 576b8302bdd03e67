"""MoL training speed on CPU: the scoring before this change against today's, side by side in one process.

    python packages/mol-train/benchmarks/bench_mol_train_speed.py --output bench-results/mol_train_speed.json
    python packages/mol-train/benchmarks/bench_mol_train_speed.py --quick     # CI: a tiny model, no target

One model (the ``ml1m_hstu_large_mol`` preset, shrunk by ``--scale`` like the quality benchmark), one set of
weights and the same ML-1M batches (synthetic ones in quick mode or without the data) for every variant:

- ``loop (before)``: per-sequence negatives scored by a Python loop over the sequences, with the gating
  weights built explicitly (softmax, dropout, renormalisation), eager float32: the code this replaced;
- ``batched``: the same negatives scored by one batched matmul and the fused mixture, eager float32;
- ``batched + compiled``: the pair-wise gating through ``torch.compile``;
- ``batched + blocked``: the pair-wise gating in cache-sized blocks (mol_core.similarity.gating_blocked);
- ``batched + fused``: component logits and gating of each block in one compiled function, activations
  kept for backward (mol_core.similarity.gating_grouped);
- ``... + bf16 gating``: and its MLP in bf16 (on CPUs with native bf16 only);
- ``batched + fused C++``: the same blocks with the gating MLP, gate and mixture, forward and backward, in
  the C++ kernel of mol_core.similarity.gating_cpp (float32; skipped where that kernel cannot run; its
  AVX-512 build on CPUs that have it, and then also ``..., AVX2 build``: the same kernel built for AVX2);
- ``per-position + ...``: fresh negatives for every position (the reference's sampler), with the blocked
  kernel or the fused one that gathers each block's candidates (mol_core.similarity.gating_gathered).

Each round runs one training step (forward, backward, AdamW step) of every variant in turn; the table
gives min and median seconds per step over the rounds, training sequences per second, and the speed-up of
the min over the ``loop (before)`` min. Full mode fails if the best ``batched`` variant is not at least
2x faster. One torch thread unless ``--threads``. ``--block-pairs N ...`` adds the fused kernel at
other block sizes (rows ``batched + fused, N pairs per block``). ``--profile NAME`` then profiles one
more step of a variant with torch.profiler and prints its operators by self CPU time (also kept in the
JSON).

``--device cuda`` runs every variant on the GPU instead (wall-clock seconds with the device synchronised
before and after each step; the profile then also lists CUDA time). The 2x target applies to the CPU
only: on CUDA the table is a report, and it says which gating kernel to use there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch

import mol_core.similarity.gating_grouped
import mol_train.model
from mol_core.atomic import write_text_atomically
from mol_core.hardware import bf16_is_native
from mol_core.kernels.isa import instruction_set
from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide, Similarity
from mol_train.config import NegativeSampling, load_config
from mol_train.data import SequenceDataset, make_synthetic, prepare, train_batch, train_rows
from mol_train.model import build_model
from mol_train.negatives import sample_negatives

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ml-1m" / "user_movie_chrono.txt"
SCALE = ["model.num_blocks=2", "data.max_len=50"]
TARGET = 2.0


def loop_score_negatives(
    similarity: Similarity,
    query: QuerySide,
    negatives: ItemSide,
    sampling: NegativeSampling,
    *,
    mask: torch.Tensor,
    inverse: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-sequence scoring this change replaced: a loop over sequences, explicit gating weights."""
    if sampling is not NegativeSampling.PER_SEQUENCE or inverse is not None:
        raise ValueError("the loop scored per-sequence negatives only")
    parts, start = [], 0
    for b, count in enumerate(mask.sum(dim=1).tolist()):
        stop = start + count
        gating = None if query.gating is None else query.gating[start:stop]
        items = ItemSide(negatives.embeddings[b], None if negatives.gating is None else negatives.gating[b])
        scores, _ = similarity.score_pairs_with_weights(
            QuerySide(query.embeddings[start:stop], gating), items
        )
        parts.append(scores)
        start = stop
    return torch.cat(parts)  # (M, R)


PER_SEQUENCE, PER_POSITION = NegativeSampling.PER_SEQUENCE, NegativeSampling.PER_POSITION
VARIANTS: dict[str, dict[str, Any]] = {
    "loop (before)": {"sampling": PER_SEQUENCE, "loop": True},
    "batched": {"sampling": PER_SEQUENCE},
    "batched + compiled": {"sampling": PER_SEQUENCE, "kernel": "compiled"},
    "batched + blocked": {"sampling": PER_SEQUENCE, "kernel": "blocked"},
    "batched + compiled + bf16 gating": {"sampling": PER_SEQUENCE, "kernel": "compiled", "bf16": True},
    "batched + blocked + bf16 gating": {"sampling": PER_SEQUENCE, "kernel": "blocked", "bf16": True},
    "batched + fused": {"sampling": PER_SEQUENCE, "kernel": "fused"},
    "batched + fused + bf16 gating": {"sampling": PER_SEQUENCE, "kernel": "fused", "bf16": True},
    "batched + fused C++": {"sampling": PER_SEQUENCE, "kernel": "fused_cpp"},
    "batched + fused C++, AVX2 build": {"sampling": PER_SEQUENCE, "kernel": "fused_cpp", "isa": "avx2"},
    "per-position + blocked + bf16 gating": {"sampling": PER_POSITION, "kernel": "blocked", "bf16": True},
    "per-position + fused + bf16 gating": {"sampling": PER_POSITION, "kernel": "fused", "bf16": True},
}


def _dataset(quick: bool, workdir: Path, max_len: int) -> tuple[SequenceDataset, str]:
    if not quick and DATA.is_file():
        return prepare(DATA, "user-item", workdir / "ml-1m", max_len=max_len, overwrite=True), "ML-1M"
    return make_synthetic(num_users=600, num_items=500, max_len=max_len, seed=0), "synthetic"


@contextlib.contextmanager
def _variant(model: mol_train.model.SequentialRecommender, spec: dict[str, Any]) -> Iterator[None]:
    model.negative_sampling = spec["sampling"]
    gating = model.similarity.gating
    gating.set_scores_backend(
        kernel=spec.get("kernel", "eager"), mlp_dtype=torch.bfloat16 if spec.get("bf16") else None
    )
    patch = (
        mock.patch.object(mol_train.model, "score_negatives", loop_score_negatives)
        if spec.get("loop")
        else contextlib.nullcontext()
    )
    blocks = (
        mock.patch.object(mol_core.similarity.gating_grouped, "BLOCK_PAIRS", spec["block_pairs"])
        if "block_pairs" in spec
        else contextlib.nullcontext()
    )
    isa = (
        mock.patch.dict(os.environ, {"MOL_CPU_ISA": spec["isa"]})
        if "isa" in spec
        else contextlib.nullcontext()
    )
    with patch, blocks, isa:
        yield


def measure(
    quick: bool,
    rounds: int,
    scale: list[str],
    workdir: Path,
    variants: list[str] | None = None,
    profile: str | None = None,
    device: torch.device | None = None,
    block_pairs: list[int] | None = None,
) -> dict[str, Any]:
    preset_overrides = (
        [
            "model.num_blocks=1",
            "data.max_len=20",
            "model.item_dim=16",
            "similarity.query_hidden_dim=32",
            "similarity.component_dim=16",
            "model.user_buckets=64",
            "train.num_negatives=32",
            "train.batch_size=32",
        ]
        if quick
        else list(scale)
    )
    config = load_config("ml1m_hstu_large_mol", preset_overrides)
    dataset, data_name = _dataset(quick, workdir, config.data.max_len)
    device = device or torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(config, dataset.num_items).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=1e-3)
    rows = train_rows(dataset)
    size = config.train.batch_size
    batches = [
        train_batch(dataset, rows[i * size : (i + 1) * size], max_len=config.data.max_len)
        for i in range(rounds + 1)
    ]
    specs = dict(VARIANTS)
    names = [n for n, spec in VARIANTS.items() if not spec.get("bf16") or bf16_is_native(device)]
    similarity = model.similarity
    cpp_reason = (
        similarity.cpp_kernel_reason(device) if isinstance(similarity, MoLSimilarity) else "not a MoL head"
    )
    if cpp_reason is not None:  # it would silently run as "fused"
        print(f"skipping the fused_cpp variants: {cpp_reason}", flush=True)
        names = [n for n in names if specs[n].get("kernel") != "fused_cpp"]
    if cpp_reason is not None or instruction_set() != "avx512":  # AVX2 build: beside AVX-512
        names = [n for n in names if "isa" not in specs[n]]
    if variants is not None:
        names = [n for n in names if n in variants or n == "loop (before)"]
    for pairs in block_pairs or []:  # the fused kernel at other block sizes (its BLOCK_PAIRS)
        name = f"batched + fused, {pairs} pairs per block"
        specs[name] = {**VARIANTS["batched + fused"], "block_pairs": pairs}
        names.append(name)
    if profile is not None and profile not in names:
        raise SystemExit(
            f"--profile {profile!r} is not measured on this device (bf16 variants need a CPU with native "
            f"bf16 matmuls); choose one of {names}"
        )
    times: dict[str, list[float]] = {name: [] for name in names}
    generator = torch.Generator().manual_seed(0)  # negatives are drawn on the CPU, as fit() draws them
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(name: str, batch: Any) -> float:
        """One training step of variant ``name``; its seconds (negative sampling excluded)."""
        spec = specs[name]
        negatives = sample_negatives(
            spec["sampling"],
            mask=batch.targets != 0,
            num_negatives=config.train.num_negatives,
            num_items=dataset.num_items,
            generator=generator,
        )
        args = [batch.inputs, batch.targets, negatives, batch.timestamps, None, batch.user_rows]
        args = [None if a is None else a.to(device) for a in args]
        with _variant(model, spec):
            synchronize()
            start = time.perf_counter()
            parts = model(*args)
            optimizer.zero_grad()
            parts.loss.backward()
            optimizer.step()
            synchronize()
            return time.perf_counter() - start

    for round_index, batch in enumerate(batches):
        for name in names:
            seconds = step(name, batch)
            if round_index > 0:  # round 0 warms up (and compiles)
                times[name].append(seconds)
    profile_table = None
    if profile is not None:  # one more step of that variant (already warm), under torch.profiler
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device.type == "cuda" else [])]
        with profiler(activities=activities) as recorded:
            step(profile, batches[-1])
        sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        profile_table = recorded.key_averages().table(sort_by=sort_by, row_limit=25)
    base = min(times["loop (before)"])
    rows_out = []
    for name in names:
        best = min(times[name])
        rows_out.append(
            {
                "variant": name,
                "min_seconds_per_step": best,
                "median_seconds_per_step": statistics.median(times[name]),
                "sequences_per_second": size / best,
                "speedup_vs_loop": base / best,
                "seconds": times[name],
            }
        )
    return {
        "data": data_name,
        "device": str(device),
        "config_overrides": preset_overrides,
        "batch_size": size,
        "rows": rows_out,
        "profile": None if profile is None else {"variant": profile, "table": profile_table},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tiny model on synthetic data, no target (CI)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds after one warm-up round")
    parser.add_argument(
        "--scale",
        nargs="*",
        default=SCALE,
        metavar="TABLE.KEY=VALUE",
        help=f"overrides of the MoL preset (default: {' '.join(SCALE)})",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        metavar="NAME",
        help="run only these variants besides the loop (default: all); names as in the table",
    )
    parser.add_argument(
        "--profile",
        choices=list(VARIANTS),
        metavar="NAME",
        help="after the rounds, profile one step of this variant (torch.profiler, ops by self CPU time)",
    )
    parser.add_argument(
        "--block-pairs",
        type=int,
        nargs="+",
        metavar="PAIRS",
        help="also run the fused kernel with these (row, candidate) pairs per block (its BLOCK_PAIRS, "
        f"default {mol_core.similarity.gating_grouped.BLOCK_PAIRS})",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where the steps run (default cpu)"
    )
    parser.add_argument("--workdir", type=Path, help="where ML-1M is prepared (default: a temporary folder)")
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rounds = 2 if args.quick else args.rounds
        variants = args.variants
        if variants is not None and args.profile is not None and args.profile not in variants:
            variants = [*variants, args.profile]
        measured = measure(
            args.quick,
            rounds,
            args.scale,
            args.workdir or Path(tmp),
            variants,
            args.profile,
            device,
            args.block_pairs,
        )
    result = {
        "benchmark": "mol_train_speed",
        "mode": "quick" if args.quick else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "bf16_native": bf16_is_native(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        **measured,
    }
    print(f"mol-train speed ({result['mode']}, {result['data']}), {result['machine']}")
    print(f"{'variant':<40} {'min s':>8} {'median s':>9} {'seq/s':>8} {'speed-up':>9}")
    for row in result["rows"]:
        print(
            f"{row['variant']:<40} {row['min_seconds_per_step']:>8.3f} "
            f"{row['median_seconds_per_step']:>9.3f} "
            f"{row['sequences_per_second']:>8.1f} {row['speedup_vs_loop']:>8.2f}x"
        )
    if result["profile"] is not None:
        print(f"\nprofile of one step, {result['profile']['variant']}:\n{result['profile']['table']}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.output, json.dumps(result, indent=2))
    best = max(r["speedup_vs_loop"] for r in result["rows"] if r["variant"].startswith("batched"))
    if not args.quick and device.type == "cpu" and best < TARGET:
        print(
            f"FAIL: the best batched variant is {best:.2f}x the loop; the target is {TARGET}x",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
