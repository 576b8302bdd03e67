"""Resume: a run stopped after a checkpoint (or killed with SIGKILL) and resumed equals the uninterrupted run,
bit for bit; corrupt checkpoints are skipped by name; a changed configuration is refused."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mol_core.errors import ArtifactError, ConfigError
from mol_train.checkpoint import find_checkpoints, load_checkpoint, save_state
from mol_train.config import load_config
from mol_train.data import make_synthetic
from mol_train.resume import fill_from_pieces, merge_rank_states
from mol_train.train import fit

FAST = ["data.max_len=12", "train.batch_size=32", "train.num_negatives=16", "train.early_stopping_patience=0"]


@pytest.fixture(scope="module")
def dataset():  # type: ignore[no-untyped-def]
    return make_synthetic(num_users=300, num_items=60, max_len=12, seed=1)


def _tensors(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested state, by path (a ShardedTensor by its local shard)."""
    if hasattr(value, "local_tensor"):
        return {prefix: value.local_tensor()}
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    found: dict[str, torch.Tensor] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found.update(_tensors(item, f"{prefix}/{key}"))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found.update(_tensors(item, f"{prefix}/{index}"))
    return found


def _records(run: Path) -> list[dict[str, Any]]:
    """The metrics log without wall-clock fields (the only thing two equal runs may differ in)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    clock = ("seconds", "seq_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in clock} for line in lines]


def assert_same_run(a: Path, b: Path) -> None:
    """Same metrics log, final checkpoint (weights, optimizer, generators), best model and results."""
    assert _records(a) == _records(b)
    last_a, last_b = find_checkpoints(a / "checkpoints")[-1], find_checkpoints(b / "checkpoints")[-1]
    assert last_a.name == last_b.name
    state_a, state_b = load_checkpoint(last_a), load_checkpoint(last_b)
    for key in ("epoch", "steps", "best_epoch", "best_ndcg", "stale"):
        assert state_a["state"][key] == state_b["state"][key], key
    tensors_a, tensors_b = _tensors(state_a["training"]), _tensors(state_b["training"])
    assert tensors_a.keys() == tensors_b.keys()
    assert any("optimizer" in name for name in tensors_a)  # the optimizer state is compared too
    for name, value in tensors_a.items():
        assert torch.equal(value, tensors_b[name]), name
    best_a, best_b = load_checkpoint(a / "best.pt"), load_checkpoint(b / "best.pt")
    assert best_a["epoch"] == best_b["epoch"]
    for name, value in best_a["weights"].items():
        assert torch.equal(value, best_b["weights"][name]), name
    results_a = json.loads((a / "results.json").read_text())
    results_b = json.loads((b / "results.json").read_text())
    assert results_a["valid"] == results_b["valid"]
    assert results_a["test"] == results_b["test"]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [  # the reference recipe's moving parts: dropout everywhere, per-position negatives, AdamW decay
            "model.user_buckets=64",
            "similarity.user_components=1",
            "similarity.user_direct=true",
            "similarity.user_dropout=0.5",
            "similarity.query_layer_norm=true",
            "similarity.query_hidden_dim=32",
            "similarity.item_dropout=0.1",
            "similarity.init='xavier'",
            "train.user_l2_weight=0.1",
            "train.weight_decay=0.001",
            "train.adam_beta2=0.98",
            "train.negatives='per_position'",
            "train.sharding='row_wise'",
            "train.table_optimizer='rowwise_adagrad'",
        ],
    ],
    ids=["tiny", "recipe-row-wise"],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_a_stopped_and_resumed_run_equals_the_uninterrupted_run(
    dataset, tmp_path: Path, overrides: list[str], threads: int
) -> None:  # type: ignore[no-untyped-def]
    # With 2 threads a kernel that adds in a thread-dependent order (index_put_ with accumulation) breaks it.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _stop_and_resume(dataset, tmp_path, overrides)
    finally:
        torch.set_num_threads(before)


def test_a_run_whose_time_bias_never_steps_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    # Without timestamps HSTU's time bias gets no gradient, so AdamW keeps no state for it; the resumed
    # optimizer must not keep the state its zero-gradient initialisation step gave it (ML-1M's case).
    untimed = make_synthetic(num_users=300, num_items=60, max_len=12, seed=1, with_timestamps=False)
    _stop_and_resume(untimed, tmp_path, [])


def _stop_and_resume(dataset, tmp_path: Path, overrides: list[str]) -> None:  # type: ignore[no-untyped-def]
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    fit(load_config("tiny_cpu", [*FAST, *overrides, "train.epochs=4"]), dataset, whole, progress=False)
    fit(load_config("tiny_cpu", [*FAST, *overrides, "train.epochs=2"]), dataset, pieces, progress=False)
    result = fit(
        load_config("tiny_cpu", [*FAST, *overrides, "train.epochs=4"]),
        dataset,
        pieces,
        resume=True,
        progress=False,
    )
    assert result.epochs_run == 4
    assert_same_run(whole, pieces)


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_skips_corrupt_checkpoints_by_name_and_refuses_when_none_is_intact(
    dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    fit(load_config("tiny_cpu", [*FAST, "train.epochs=2"]), dataset, tmp_path, progress=False)
    older, newest = find_checkpoints(tmp_path / "checkpoints")
    _corrupt(newest)
    with caplog.at_level(logging.WARNING, logger="mol_train.resume"):
        resumed = fit(
            load_config("tiny_cpu", [*FAST, "train.epochs=2"]), dataset, tmp_path, resume=True, progress=False
        )
    assert resumed.epochs_run == 2  # epoch 2 trained again from epoch 1's checkpoint
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "resuming from epoch 1" in warning
    assert f"{newest} is corrupt" in warning
    assert [r["epoch"] for r in _records(tmp_path) if r["kind"] == "train"] == [1, 2]

    # a missing digest file is called missing; with nothing intact the run is refused with both names
    older, newest = find_checkpoints(tmp_path / "checkpoints")
    older.with_name(older.name + ".sha256").unlink()
    _corrupt(newest)
    three = load_config("tiny_cpu", [*FAST, "train.epochs=3"])
    with pytest.raises(ArtifactError, match="no intact checkpoint") as refused:
        fit(three, dataset, tmp_path, resume=True, progress=False)
    message = str(refused.value)
    assert f"{newest} is corrupt" in message
    assert f"{older} is unverifiable: its digest file {older.name}.sha256 is missing" in message
    with pytest.raises(ArtifactError, match=r"digest file step-000000001\.pt\.sha256 is missing"):
        load_checkpoint(older)


def test_resume_refuses_a_changed_configuration_or_a_missing_rank_file(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fit(load_config("tiny_cpu", [*FAST, "train.epochs=1"]), dataset, tmp_path, progress=False)
    changed = load_config("tiny_cpu", [*FAST, "train.epochs=2", "train.learning_rate=0.01"])
    with pytest.raises(ConfigError, match=r"train\.learning_rate \(checkpoint 0\.003, now 0\.01\)"):
        fit(changed, dataset, tmp_path, resume=True, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["learning_rate"] == 0.003  # untouched
    (only,) = find_checkpoints(tmp_path / "checkpoints")
    saved = load_checkpoint(only)
    saved["world_size"] = 2
    save_state(only, saved)
    two = load_config("tiny_cpu", [*FAST, "train.epochs=2"])
    rank1 = tmp_path / "checkpoints" / "rank-1" / only.name
    with pytest.raises(ArtifactError, match=rf"checkpoint of 2 process\(es\)\): {rank1} does not exist"):
        fit(two, dataset, tmp_path, resume=True, progress=False)


def _fit_command(data: Path, run: Path, epochs: int, overrides: list[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mol_train.cli",
        "fit",
        "--config",
        "tiny_cpu",
        "--data",
        str(data),
        "--output",
        str(run),
        "--no-progress",
        "--threads",
        "1",
        *[arg for setting in [*FAST, *overrides, f"train.epochs={epochs}"] for arg in ("--set", setting)],
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(
    "overrides",
    [[], ["train.gating_kernel='fused'", "train.gating_bf16=true"]],
    ids=["tiny", "compiled-fused-kernel"],
)
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_run(
    tmp_path: Path, overrides: list[str]
) -> None:
    data, whole, killed = tmp_path / "data", tmp_path / "whole", tmp_path / "killed"
    make = [sys.executable, "-m", "mol_train.cli", "data", "synthetic", "--output", str(data)]
    subprocess.run([*make, "--users", "300", "--items", "60", "--max-len", "12"], check=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    epochs = 6
    process = subprocess.Popen(_fit_command(data, killed, epochs, overrides), env=env)
    try:
        deadline = time.monotonic() + 300
        while not (killed / "checkpoints" / "step-000000002.pt").exists():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint of epoch 2 within 300 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    subprocess.run(_fit_command(data, whole, epochs, overrides), env=env, check=True)
    subprocess.run(_fit_command(data, killed, epochs, overrides, "--resume"), env=env, check=True)
    assert_same_run(whole, killed)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fit_two_ranks(command: list[str]) -> None:
    """Runs ``command`` as two torchrun-style gloo ranks on a loopback port; fails if either fails."""
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    base |= {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    ranks = [base | {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"} for r in range(2)]
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for env in ranks
    ]
    logs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            logs.append(out.decode(errors="replace")[-3000:])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    if any(proc.returncode for proc in procs):
        pytest.fail("a rank failed:\n" + "\n---\n".join(logs))


@pytest.mark.slow
@pytest.mark.integration
def test_two_ranks_resume_from_their_own_checkpoints_to_the_uninterrupted_run(tmp_path: Path) -> None:
    data, whole, pieces = tmp_path / "data", tmp_path / "whole", tmp_path / "pieces"
    make = [sys.executable, "-m", "mol_train.cli", "data", "synthetic", "--output", str(data)]
    subprocess.run([*make, "--users", "300", "--items", "60", "--max-len", "12"], check=True)
    sharded = ["train.sharding='row_wise'", "train.table_optimizer='rowwise_adagrad'"]
    _fit_two_ranks(_fit_command(data, whole, 3, sharded))
    _fit_two_ranks(_fit_command(data, pieces, 2, sharded))
    rank1 = find_checkpoints(pieces / "checkpoints" / "rank-1")
    assert [p.name for p in rank1] == ["step-000000001.pt", "step-000000002.pt"]
    _corrupt(rank1[-1])  # epoch 2 is intact on rank 0 only: both ranks must go back to epoch 1
    _fit_two_ranks(_fit_command(data, pieces, 3, sharded, "--resume"))
    assert_same_run(whole, pieces)
    for rank in (0, 1):  # each rank's final shards, not only rank 0's
        folder = whole / "checkpoints" / "rank-1" if rank else whole / "checkpoints"
        other = pieces / "checkpoints" / "rank-1" if rank else pieces / "checkpoints"
        a, b = load_checkpoint(find_checkpoints(folder)[-1]), load_checkpoint(find_checkpoints(other)[-1])
        for name, value in _tensors(a["training"]).items():
            assert torch.equal(value, _tensors(b["training"])[name]), (rank, name)


def test_a_checkpoint_of_the_older_format_resumes_with_a_warning(
    dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    fit(load_config("tiny_cpu", [*FAST, "train.epochs=1"]), dataset, tmp_path, progress=False)
    (only,) = find_checkpoints(tmp_path / "checkpoints")
    saved = load_checkpoint(only)
    save_state(only, {"weights": saved["weights"], "state": saved["state"]})  # weights and counters only
    with caplog.at_level(logging.WARNING, logger="mol_train.train"):
        result = fit(
            load_config("tiny_cpu", [*FAST, "train.epochs=2"]), dataset, tmp_path, resume=True, progress=False
        )
    assert result.epochs_run == 2
    assert "holds weights only" in caplog.text


def test_fill_from_pieces_copies_every_overlap_by_hand() -> None:
    table = torch.arange(24.0).reshape(6, 4)  # the whole table
    pieces = [([0, 0], table[0:4].clone()), ([4, 0], table[4:6].clone())]  # two ranks, row-wise 4 + 2
    for start, rows in ((0, 3), (3, 3), (1, 5), (5, 1)):  # three ranks, then uneven blocks
        target = torch.full((rows, 4), -1.0)
        assert fill_from_pieces(target, [start, 0], pieces) == rows * 4
        assert torch.equal(target, table[start : start + rows])
    column_block = torch.full((6, 2), -1.0)  # a block of columns 2..3 (column-wise sharding)
    assert fill_from_pieces(column_block, [0, 2], pieces) == 12
    assert torch.equal(column_block, table[:, 2:])
    outside = torch.full((2, 4), -1.0)
    assert fill_from_pieces(outside, [6, 0], pieces) == 0  # rows the pieces do not hold: nothing written
    assert bool((outside == -1).all())


def test_merge_rank_states_joins_table_shards_and_keeps_rank_0_for_the_rest() -> None:
    rank0 = {"w": torch.ones(2), "table": {"__local_shards__": [([0, 0], torch.zeros(2, 3))]}, "n": [1, 2]}
    rank1 = {"w": torch.ones(2) * 7, "table": {"__local_shards__": [([2, 0], torch.ones(1, 3))]}, "n": [1, 2]}
    merged = merge_rank_states([rank0, rank1])
    assert torch.equal(merged["w"], torch.ones(2))  # replicated values: rank 0's
    assert [offsets for offsets, _ in merged["table"]["__local_shards__"]] == [[0, 0], [2, 0]]
    assert merged["n"] == [1, 2]
