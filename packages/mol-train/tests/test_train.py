"""fit(): learns the planted structure, writes its outputs, refuses bad runs (resume: test_resume.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mol_core.errors import ConfigError
from mol_train.config import load_config
from mol_train.data import make_synthetic
from mol_train.distributed import process_group_threads
from mol_train.train import fit

FAST = ["data.max_len=12", "train.batch_size=32", "train.num_negatives=16"]


@pytest.fixture(scope="module")
def dataset():  # type: ignore[no-untyped-def]
    return make_synthetic(num_users=300, num_items=60, max_len=12, seed=1)


def test_fit_beats_chance_and_writes_its_outputs(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = load_config("tiny_cpu", [*FAST, "train.epochs=4", "train.learning_rate=0.01"])
    result = fit(config, dataset, tmp_path, progress=False)
    chance_hr10 = 10 / dataset.num_items  # a random ranking of N items (history filtering only helps)
    assert result.test["hr@10"] > 1.5 * chance_hr10, result.test
    assert result.test["count"] == dataset.num_users
    for name in ("metrics.jsonl", "curves.png", "results.json", "config.json", "best.pt", "best.pt.sha256"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test"]["hr@10"] == pytest.approx(result.test["hr@10"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    # fit() left its process group and joined gloo's threads: none may run on into interpreter exit.
    if Path("/proc/self/task").is_dir():
        assert process_group_threads() == []


def test_bad_runs_are_refused(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="exceeds the prepared data set's max_len"):
        fit(load_config("tiny_cpu", ["data.max_len=40"]), dataset, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        fit(load_config("tiny_cpu", FAST), dataset, tmp_path / "empty", resume=True, progress=False)


def test_load_weights_round_trips_a_width_fbgemm_pads(dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from mol_train.model import build_model
    from mol_train.train import load_weights

    config = load_config(
        "tiny_cpu", [*FAST, "model.item_dim=10", "model.user_buckets=8", "similarity.user_components=1"]
    )
    torch.manual_seed(0)
    source = build_model(config, dataset.num_items).eval()
    weights = source.query_encoder().state_dict()
    torch.manual_seed(1)
    target = build_model(config, dataset.num_items).eval()
    load_weights(target, weights)
    for name, value in target.query_encoder().state_dict().items():
        torch.testing.assert_close(value, weights[name], msg=name)


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.negatives='per_position'", "train.gating_kernel='blocked'", "train.gating_bf16=true"],
        [
            "model.user_buckets=64",
            "similarity.user_components=1",
            "similarity.user_direct=true",
            "similarity.query_layer_norm=true",
            "similarity.query_hidden_dim=32",
            "similarity.item_dropout=0.1",
            "similarity.init='xavier'",
            "train.user_l2_weight=0.1",
            "train.weight_decay=0.001",
            "train.adam_beta2=0.98",
            "train.grad_clip=0.0",
        ],
    ],
    ids=["per-position-blocked-bf16", "reference-recipe"],
)
def test_fit_with_the_recipe_options_beats_chance(dataset, tmp_path: Path, overrides: list[str]) -> None:  # type: ignore[no-untyped-def]
    config = load_config("tiny_cpu", [*FAST, "train.epochs=4", "train.learning_rate=0.01", *overrides])
    result = fit(config, dataset, tmp_path, progress=False)
    assert result.test["hr@10"] > 1.5 * 10 / dataset.num_items, result.test


def test_encoder_from_weights_puts_the_tables_where_the_model_is(dataset) -> None:  # type: ignore[no-untyped-def]
    # best.pt is loaded to the CPU; a model trained on CUDA must get its tables on CUDA (this regressed:
    # fit's final evaluation on a GPU failed with "mat1 is on cpu"). The meta device stands in for CUDA.
    from mol_train.model import build_model
    from mol_train.train import encoder_from_weights

    config = load_config("tiny_cpu", [*FAST, "model.user_buckets=8", "similarity.user_components=1"])
    weights = build_model(config, dataset.num_items).query_encoder().state_dict()  # CPU tensors
    elsewhere = build_model(config, dataset.num_items).to("meta")
    encoder = encoder_from_weights(elsewhere, weights)
    assert encoder.item_table.device.type == "meta"
    assert encoder.user_table is not None
    assert encoder.user_table.device.type == "meta"


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["tiny_cpu", "quickstart_mol"])
def test_fit_on_cuda_beats_chance(dataset, tmp_path: Path, preset: str) -> None:  # type: ignore[no-untyped-def]
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    config = load_config(preset, [*FAST, "train.epochs=3", "train.learning_rate=0.01", "train.eval_every=1"])
    result = fit(config, dataset, tmp_path, progress=False, device="cuda")
    assert result.test["hr@10"] > 1.5 * 10 / dataset.num_items, result.test
    assert result.test["count"] == dataset.num_users


@pytest.mark.parametrize(
    ("negatives", "kernel_on", "want_bf16"),
    [("per_sequence", True, False), ("per_position", True, True), ("per_sequence", False, True)],
)
def test_fused_cpp_takes_precedence_over_gating_bf16_where_it_runs(  # type: ignore[no-untyped-def]
    dataset, monkeypatch: pytest.MonkeyPatch, negatives: str, kernel_on: bool, want_bf16: bool
) -> None:
    """The C++ kernel is float32: with ``gating_bf16`` on a bf16 CPU it still runs where it can, and bf16
    applies where the head falls back (per-position negatives, the kernel switched off)."""
    import torch

    from mol_core.similarity import gating_cpp
    from mol_train import train
    from mol_train.model import build_model

    if kernel_on and gating_cpp.unavailable_reason(16, 6) is not None:
        pytest.skip(f"the C++ gating kernel cannot run here: {gating_cpp.unavailable_reason(16, 6)}")
    if not kernel_on:
        monkeypatch.setenv("MOL_CPU_KERNEL", "0")
    monkeypatch.setattr(train, "bf16_is_native", lambda device: True)
    config = load_config(
        "tiny_cpu",
        [
            *FAST,
            f"train.negatives='{negatives}'",
            "train.gating_kernel='fused_cpp'",
            "train.gating_bf16=true",
        ],
    )
    model = build_model(config, dataset.num_items)
    train._set_scoring_backend(model, config, torch.device("cpu"))
    assert model.similarity.gating.mlp_dtype == (torch.bfloat16 if want_bf16 else None)
    assert (model.similarity.cpp_kernel_reason() is None) == (kernel_on and not want_bf16)
