"""The training recipe: validate, set up, train, clean up.

``fit`` trains a :class:`~mol_train.model.SequentialRecommender` on a prepared data set in one process or
in N processes launched by ``torchrun`` (the same code: one process runs a one-rank gloo group). Every
``eval_every`` epochs it evaluates on the validation split over the full corpus, keeps the best model by
validation NDCG@10, writes a checkpoint (atomically), and stops early after ``early_stopping_patience``
evaluations without improvement. At the end the best model is evaluated on validation and test.

Outputs in ``out_dir``: ``metrics.jsonl`` (one record per epoch and evaluation), ``curves.png``,
``checkpoints/step-*.pt`` (the latest two, for ``resume``), ``best.pt`` (the best model's weights as a
torchrec-free :class:`~mol_train.model.QueryEncoder` state) and ``results.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from mol_core.atomic import write_text_atomically
from mol_core.errors import ConfigError
from mol_core.hardware import bf16_is_native
from mol_core.similarity import MoLSimilarity
from mol_train.checkpoint import load_checkpoint, save_checkpoint, save_state
from mol_train.config import NegativeSampling, SimilarityKind, TrainConfig
from mol_train.data import SequenceDataset, iter_train_batches, train_rows
from mol_train.distributed import (
    DistributedContext,
    ShardingKind,
    TableOptimizer,
    destroy_distributed,
    init_distributed,
    shard_model,
)
from mol_train.evaluate import evaluate_encoder
from mol_train.model import QueryEncoder, SequentialRecommender, build_model
from mol_train.negatives import sample_negatives
from mol_train.resume import (
    check_resumable_config,
    choose_resume_checkpoint,
    merge_rank_states,
    rank_checkpoint_dir,
    restore_training_state,
    training_state,
)
from mol_train.run_log import MetricsLog, plot_training_curves

__all__ = ["FitResult", "encoder_from_weights", "fit", "load_weights", "restore_encoder", "run_title"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    """What a training run produced.

    Attributes:
        best_epoch: the epoch whose model is kept (best validation NDCG@10).
        epochs_run: epochs trained in this call (after a resume: counted from the start).
        valid: validation metrics of the best model.
        test: test metrics of the best model.
        wall_seconds: wall time of the call.
        train_sequences_per_second: training sequences per second over all processes, training only.
        out_dir: where the outputs are.
    """

    best_epoch: int
    epochs_run: int
    valid: dict[str, float]
    test: dict[str, float]
    wall_seconds: float
    train_sequences_per_second: float
    out_dir: Path


def fit(
    config: TrainConfig,
    dataset: SequenceDataset,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> FitResult:
    """Trains ``config`` on ``dataset`` and writes the run's outputs to ``out_dir``.

    Args:
        config: the configuration (validated here).
        dataset: a prepared data set; ``config.data.max_len`` must not exceed its ``max_len``.
        out_dir: output folder (created).
        resume: continue from the newest checkpoint in ``out_dir/checkpoints`` that is intact on every
            rank (newer corrupt ones are skipped with a warning naming them); the run then continues as
            the uninterrupted run would (mol_train.resume). The configuration may differ only in
            ``mol_train.resume.RESUMABLE_CHANGES``. The number of processes may differ: the tables are
            then resharded from every rank's file (which every rank must be able to read).
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        progress: show a progress bar with the live loss and throughput (rank 0 only).

    Raises:
        ConfigError: an inconsistent configuration or a data set with too few users to train.
        ArtifactError: on resume, no checkpoint intact on every rank.

    Example::

        config = load_config("tiny_cpu", ["train.epochs=2"])
        result = fit(config, make_synthetic(num_users=300, num_items=200), "runs/tiny")
        result.test["ndcg@10"], result.best_epoch
    """
    config.validate()
    if config.data.max_len > dataset.max_len:
        raise ConfigError(
            f"data.max_len = {config.data.max_len} exceeds the prepared data set's max_len "
            f"{dataset.max_len}; "
            "prepare it again with a larger max_len or lower data.max_len"
        )
    if train_rows(dataset).size == 0:
        raise ConfigError("the data set has no user with enough items to train (at least 4 are needed)")
    started = time.perf_counter()
    out = Path(out_dir)
    with _process_group(device) as context:
        if context.is_main:
            out.mkdir(parents=True, exist_ok=True)
        return _train(config, dataset, out, context, resume=resume, progress=progress, started=started)


def _train(
    config: TrainConfig,
    dataset: SequenceDataset,
    out: Path,
    context: DistributedContext,
    *,
    resume: bool,
    progress: bool,
    started: float,
) -> FitResult:
    settings = config.train
    torch.manual_seed(settings.seed)  # the same initial weights in every process
    model = build_model(config, dataset.num_items)
    state: dict[str, Any] = {"epoch": 0, "best_epoch": 0, "best_ndcg": -math.inf, "stale": 0}
    saved: dict[str, Any] | None = None
    checkpoints = out / "checkpoints"
    if resume:
        epoch, writers = choose_resume_checkpoint(checkpoints, context)
        name = f"step-{epoch:09d}.pt"
        if writers == context.world_size:  # each rank its own file
            path = rank_checkpoint_dir(checkpoints, context.rank) / name
            saved = load_checkpoint(path)
        else:  # another process count: every writer's file, the tables' shards joined
            path = checkpoints / name
            states = [load_checkpoint(rank_checkpoint_dir(checkpoints, r) / name) for r in range(writers)]
            saved = states[0]
            if "training" in saved:
                saved["training"] = merge_rank_states([state["training"] for state in states])
            logger.warning(
                "resuming the checkpoint of %d process(es) with %d: tables resharded; the run continues "
                "from the same weights and optimizer state",
                writers,
                context.world_size,
            )
        _check_resumable(saved, config, path)
        if "training" not in saved:  # written before checkpoints held the optimizer and generators
            load_weights(model, saved["weights"])
            logger.warning("%s holds weights only: the resumed run differs from an uninterrupted one", path)
        state = saved["state"]
        logger.info("resuming from %s (epoch %d)", path, state["epoch"])
    if context.is_main:
        write_text_atomically(out / "config.json", json.dumps(_jsonable(config), indent=2, sort_keys=True))
    sharded = shard_model(
        model,
        device=context.device,
        sharding=ShardingKind(settings.sharding),
        table_optimizer=TableOptimizer(settings.table_optimizer),
        table_lr=settings.table_learning_rate or settings.learning_rate,
        dense_lr=settings.learning_rate,
        dense_weight_decay=settings.weight_decay,
        table_weight_decay=settings.weight_decay,
        adam_betas=(0.9, settings.adam_beta2),
    )
    inner: SequentialRecommender = sharded.model.module
    _set_scoring_backend(inner, config, context.device)
    log = MetricsLog(out / "metrics.jsonl") if context.is_main else None
    autocast = settings.bf16 and context.device.type == "cuda"
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + state["epoch"])
    if saved is not None and "training" in saved:
        restore_training_state(saved["training"], sharded, generator)
    if log is not None and state["epoch"] > 0:
        log.drop_after(state["epoch"])  # records of epochs the killed run trained past its checkpoint
    train_seconds = float(state.get("train_seconds", 0.0))
    train_sequences = int(state.get("train_sequences", 0))
    epochs_run = state["epoch"]
    steps = int(state.get("steps", 0))
    for epoch in range(state["epoch"] + 1, settings.epochs + 1):
        sharded.model.train()
        epoch_start = time.perf_counter()
        losses, sequences = [], 0
        batches = _batches(dataset, config, epoch, context)
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=not (progress and context.is_main), leave=False)
        for batch in bar:
            if (
                inner.index_layer is not None
                and not inner.index_active
                and steps >= config.index.warmup_steps
            ):
                inner.warm_start_index(seed=settings.seed)  # k-means on the corpus: collective under sharding
                logger.info("index layer %s warm-started at step %d", config.index.kind, steps)
                state.update(best_ndcg=-math.inf, stale=0)  # the kept model must carry a trained index
            mask = batch.targets != 0  # (B, L)
            negatives = sample_negatives(
                config.negative_sampling,
                mask=mask,
                num_negatives=settings.num_negatives,
                num_items=dataset.num_items,
                generator=generator,
                rank=context.rank,
                world_size=context.world_size,
                counts_of_ranks=_counts_of_ranks(mask, config, context),
            )  # (M, R), (B, R) or (R,)
            next_times = None if batch.target_timestamps is None else batch.target_timestamps[:, -1]
            args = [batch.inputs, batch.targets, negatives, batch.timestamps, next_times, batch.user_rows]
            args = [None if a is None else a.to(context.device) for a in args]
            with torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                parts = sharded.model(*args)
            sharded.optimizer.zero_grad()
            parts.loss.backward()
            if settings.grad_clip > 0:
                params = [p for p in sharded.model.parameters() if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            sharded.optimizer.step()
            steps += 1
            losses.append(float(parts.loss.detach()))
            sequences += int(batch.inputs.shape[0])
            elapsed = time.perf_counter() - epoch_start
            bar.set_postfix(loss=f"{losses[-1]:.3f}", seq_s=f"{sequences * context.world_size / elapsed:.0f}")
        seconds = time.perf_counter() - epoch_start
        train_seconds += seconds
        train_sequences += sequences * context.world_size
        epochs_run = epoch
        epoch_loss = _mean_over_ranks(losses, context)  # a collective: every rank calls it
        if log is not None:
            log.write(
                {
                    "kind": "train",
                    "epoch": epoch,
                    "loss": epoch_loss,
                    "seconds": seconds,
                    "seq_per_s": sequences * context.world_size / max(seconds, 1e-9),
                }
            )
        over_budget = 0 < settings.time_budget_seconds <= train_seconds
        if epoch % settings.eval_every and epoch != settings.epochs and not over_budget:
            continue
        encoder = inner.query_encoder()  # gathers the tables: collective under sharding
        valid = evaluate_encoder(
            encoder, dataset, "valid", max_len=config.data.max_len, device=context.device
        )
        improved = valid["ndcg@10"] > state["best_ndcg"]
        state.update(epoch=epoch, steps=steps, train_seconds=train_seconds, train_sequences=train_sequences)
        if improved:
            state.update(best_epoch=epoch, best_ndcg=valid["ndcg@10"], stale=0)
        else:
            state["stale"] += 1
        weights = encoder.state_dict()
        checkpoint = {
            "state": dict(state),
            "config": _jsonable(config),
            "world_size": context.world_size,
            "training": training_state(sharded, generator),  # after evaluation: the next epoch's start
        }
        if log is not None:  # rank 0 logs and writes the weights
            log.write({"kind": "valid", "epoch": epoch, **valid})
            logger.info("epoch %d valid %s", epoch, _short(valid))
            if improved:  # before the checkpoint: a run killed in between replays this epoch identically
                save_state(out / "best.pt", {"weights": weights, "epoch": epoch})
            checkpoint["weights"] = weights
        save_checkpoint(rank_checkpoint_dir(checkpoints, context.rank), epoch, checkpoint)
        patience = settings.early_stopping_patience
        if patience and state["stale"] >= patience:
            logger.info("early stop at epoch %d: no NDCG@10 gain in %d evaluations", epoch, patience)
            break
        if over_budget:
            logger.info(
                "stop at epoch %d: training time budget of %.0fs used", epoch, settings.time_budget_seconds
            )
            break
    if context.world_size > 1:
        dist.barrier()
    best = load_checkpoint(out / "best.pt")
    best_encoder = encoder_from_weights(inner, best["weights"])
    final = {
        split: evaluate_encoder(
            best_encoder, dataset, split, max_len=config.data.max_len, device=context.device
        )
        for split in ("valid", "test")
    }
    result = FitResult(
        best_epoch=int(best["epoch"]),
        epochs_run=epochs_run,
        valid=final["valid"],
        test=final["test"],
        wall_seconds=time.perf_counter() - started,
        train_sequences_per_second=train_sequences / max(train_seconds, 1e-9),
        out_dir=out,
    )
    if context.is_main:
        write_text_atomically(out / "results.json", json.dumps(_jsonable(result), indent=2, sort_keys=True))
        plot_training_curves(out / "metrics.jsonl", out / "curves.png", title=run_title(config, out))
    return result


def run_title(config: TrainConfig, out: Path) -> str:
    """One line naming a run for its plots: run folder, encoder, head, seed, epochs and data
    (``data.path``'s last part; "data in memory" when the data set was passed without a path)."""
    sim = config.similarity
    head = (
        f"MoL {sim.query_components}x{sim.item_components}x{sim.component_dim}"
        if sim.kind is SimilarityKind.MOL
        else "dot product"
    )
    model = config.model
    data = Path(config.data.path).name if config.data.path else "data in memory"
    return (
        f"{out.name}: {model.encoder.value} ({model.num_blocks} blocks, max_len {config.data.max_len})"
        f" + {head}, seed {config.train.seed}, {config.train.epochs} epochs on {data}"
    )


def _set_scoring_backend(model: SequentialRecommender, config: TrainConfig, device: torch.device) -> None:
    """``train.gating_kernel`` and ``train.gating_bf16`` for a MoL head (bf16 only where the device runs it
    natively: CUDA, or a CPU with AVX512-BF16 / AMX; elsewhere it stays float32 and says so).

    With ``"fused_cpp"`` the C++ kernel, which is float32, takes precedence where it runs (a CPU, negatives
    shared per sequence or batch): ``gating_bf16`` then applies only where the head falls back to the
    torch paths (a GPU, per-position negatives, no compiler)."""
    gating = getattr(model.similarity, "gating", None)
    kernel = config.train.gating_kernel
    if gating is None or (kernel == "eager" and not config.train.gating_bf16):
        return
    bf16 = config.train.gating_bf16 and bf16_is_native(device)
    if config.train.gating_bf16 and not bf16:
        logger.warning("train.gating_bf16: this CPU has no native bf16 matmul; the gating stays float32")
    similarity = model.similarity
    if kernel == "fused_cpp" and isinstance(similarity, MoLSimilarity):
        gating.set_scores_backend(kernel=kernel, mlp_dtype=None)
        reason = similarity.cpp_kernel_reason(device)
        if reason is None and config.train.negatives != NegativeSampling.PER_POSITION:
            if bf16:
                logger.info("train.gating_bf16: the C++ gating kernel runs float32 and takes precedence here")
            return
        if reason is not None:
            logger.warning("train.gating_kernel = 'fused_cpp' runs as 'fused' here: %s", reason)
    gating.set_scores_backend(kernel=kernel, mlp_dtype=torch.bfloat16 if bf16 else None)


def encoder_from_weights(model: SequentialRecommender, weights: dict[str, torch.Tensor]) -> QueryEncoder:
    """A :class:`QueryEncoder` holding ``weights`` (``best.pt`` / checkpoint ``weights``).

    It shares (and overwrites) ``model``'s encoder and similarity modules.

    Returns:
        the query encoder, with ``weights`` loaded (its item and user tables are copies of theirs, on the
        device of ``model``'s parameters).

    Raises:
        KeyError: ``weights`` has no ``item_table``.
        RuntimeError: ``weights`` does not fit ``model`` (``load_state_dict``: missing or unexpected keys,
            other shapes).

    Example::

        model = build_model(config, dataset.num_items)
        encoder = encoder_from_weights(model, torch.load("runs/ml1m/best.pt")["weights"])
    """
    device = next(model.similarity.parameters(), next(model.encoder.parameters())).device
    user_table = weights.get("user_table")
    encoder = QueryEncoder(
        weights["item_table"].to(device),
        None if user_table is None else user_table.to(device),
        model.encoder,
        model.similarity,
        model.index_layer,
    )
    encoder.load_state_dict(weights)
    return encoder


def restore_encoder(
    run_dir: str | Path, num_items: int, *, weights: str | Path | None = None
) -> tuple[TrainConfig, QueryEncoder]:
    """The configuration and trained query path of a finished run, in eval mode.

    Args:
        run_dir: a :func:`fit` output folder (``config.json`` and ``best.pt``).
        num_items: N, the item count of the data set the run trained on.
        weights: another weights file of the run (a checkpoint) instead of ``best.pt``.

    Raises:
        ArtifactError: ``run_dir`` is not a run folder, or the weights file is missing or corrupt.
    """
    from mol_core.errors import ArtifactError
    from mol_train.config import config_from_dict

    run = Path(run_dir)
    config_file = run / "config.json"
    if not config_file.is_file():
        raise ArtifactError(f"{run} is not a run directory: {config_file} is missing")
    config = config_from_dict(json.loads(config_file.read_text()), str(config_file))
    model = build_model(config, num_items)
    state = load_checkpoint(weights or run / "best.pt")
    return config, encoder_from_weights(model, state["weights"]).eval()


def load_weights(model: SequentialRecommender, weights: dict[str, torch.Tensor]) -> None:
    """Loads ``weights`` into an unsharded ``model``, tables included (call before ``shard_model``)."""
    encoder_from_weights(model, weights)
    with torch.no_grad():
        model.tables.item_table_weight()[1:].copy_(weights["item_table"][1:])
        user_table = weights.get("user_table")
        if user_table is not None and model.tables.user_collection is not None:
            model.tables.user_table_weight().copy_(user_table)


def _batches(
    dataset: SequenceDataset, config: TrainConfig, epoch: int, context: DistributedContext
) -> Iterator[Any]:
    per_rank = max(1, config.train.batch_size // context.world_size)
    batches = iter_train_batches(
        dataset,
        per_rank,
        seed=config.train.seed,
        epoch=epoch,
        drop_last=context.world_size > 1,  # every rank must run the same number of steps
        rank=context.rank,
        world_size=context.world_size,
        max_len=config.data.max_len,
    )
    limit = config.train.max_steps_per_epoch
    for step, batch in enumerate(batches):
        if limit and step >= limit:
            return
        yield batch


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    if "config" in saved:
        check_resumable_config(saved["config"], _jsonable(config), checkpoint=path)


@contextlib.contextmanager
def _process_group(device: str | None) -> Iterator[DistributedContext]:
    if dist.is_initialized():  # the caller owns the group
        rank, world = dist.get_rank(), dist.get_world_size()
        on_cuda = dist.get_backend() == "nccl"
        dev = (
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank))) if on_cuda else torch.device("cpu")
        )
        yield DistributedContext(
            rank, world, int(os.environ.get("LOCAL_RANK", rank)), dev, dist.get_backend()
        )
        return
    context = init_distributed(device=device)
    try:
        yield context
    finally:
        destroy_distributed()


def _counts_of_ranks(
    mask: torch.Tensor, config: TrainConfig, context: DistributedContext
) -> torch.Tensor | None:
    """``(world_size, B)`` supervised positions per row of every rank, for per-position negatives over
    several processes (an all-gather, so every rank calls it); ``None`` otherwise."""
    if context.world_size == 1 or config.negative_sampling is not NegativeSampling.PER_POSITION:
        return None
    counts = mask.sum(dim=1).to(torch.int64).to(context.device)  # (B,)
    gathered = [torch.empty_like(counts) for _ in range(context.world_size)]
    dist.all_gather(gathered, counts)
    return torch.stack(gathered).cpu()  # (W, B)


def _mean_over_ranks(losses: list[float], context: DistributedContext) -> float:
    """The mean of every rank's step losses of this epoch (each rank's alone with one process)."""
    if context.world_size == 1:
        return sum(losses) / max(1, len(losses))
    totals = torch.tensor([sum(losses), float(len(losses))], dtype=torch.float64, device=context.device)
    dist.all_reduce(totals)
    return float(totals[0] / totals[1].clamp_min(1))


def _short(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in ("hr@10", "ndcg@10", "mrr"))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
        return value.value
    return value
