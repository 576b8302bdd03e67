"""Configs: every preset loads, overrides apply, and bad keys or values are refused with the valid ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from mol_core.errors import ConfigError
from mol_train.config import (
    EncoderKind,
    LossKind,
    NegativeSampling,
    SimilarityKind,
    list_presets,
    load_config,
)


def test_every_shipped_preset_loads_and_names_its_command() -> None:
    presets = list_presets()
    assert {"ml1m_hstu_large_mol", "ml1m_hstu_large_dot", "ml1m_sasrec_dot", "tiny_cpu"} <= set(presets)
    for name in presets:
        config = load_config(name)
        assert config.train.epochs >= 1
        from importlib import resources

        first_line = (resources.files("mol_train") / "configs" / f"{name}.toml").read_text().splitlines()[0]
        assert first_line.startswith("# mol-train fit --config"), name


def test_paper_preset_has_the_paper_settings() -> None:
    config = load_config("ml1m_hstu_large_mol")
    assert config.model.encoder is EncoderKind.HSTU
    assert (config.model.num_blocks, config.model.num_heads, config.model.attention_dim) == (8, 2, 25)
    assert config.model.item_dim == 50
    assert config.similarity.kind is SimilarityKind.MOL
    sim = config.similarity
    assert (sim.query_components, sim.item_components, sim.component_dim) == (8, 4, 64)
    assert (config.train.batch_size, config.train.learning_rate, config.train.num_negatives) == (
        128,
        1e-3,
        128,
    )
    assert config.train.loss is LossKind.SAMPLED


def test_mol_preset_has_the_reference_recipe() -> None:
    """The values read from bailuding/rails' ML-1M MoL config (docs/mol-train-models.md, "The MoL head")."""
    config = load_config("ml1m_hstu_large_mol")
    sim, train = config.similarity, config.train
    assert (sim.query_layer_norm, sim.query_hidden_dim, sim.item_dropout, sim.init) == (
        True,
        512,
        0.1,
        "xavier",
    )
    assert (sim.user_components, sim.user_direct, sim.user_dropout, config.model.user_buckets) == (
        1,
        True,
        0.5,
        6040,
    )
    assert config.user_dim == 64  # the user-id embedding is the 64-d component itself
    assert (train.weight_decay, train.adam_beta2, train.grad_clip, train.user_l2_weight) == (
        1e-3,
        0.98,
        0.0,
        0.1,
    )
    assert (sim.gating_dropout, sim.temperature, train.mi_weight) == (0.2, 0.05, 0.001)
    dot = load_config("ml1m_hstu_large_dot").train  # the reference's dot baseline: the same optimiser
    assert (dot.weight_decay, dot.adam_beta2, dot.grad_clip, dot.negatives) == (
        train.weight_decay,
        train.adam_beta2,
        train.grad_clip,
        train.negatives,
    )


def test_shared_negatives_is_the_older_spelling_of_negatives_shared() -> None:
    assert load_config("tiny_cpu").negative_sampling is NegativeSampling.PER_SEQUENCE
    assert load_config("tiny_cpu", ["train.negatives='per_position'"]).negative_sampling is (
        NegativeSampling.PER_POSITION
    )
    assert (
        load_config("tiny_cpu", ["train.shared_negatives=true"]).negative_sampling is NegativeSampling.SHARED
    )


def test_overrides_are_parsed_as_toml_values() -> None:
    config = load_config(
        "tiny_cpu", ["train.epochs=7", "train.learning_rate=0.5", "data.path=somewhere/else"]
    )
    assert config.train.epochs == 7
    assert config.train.learning_rate == 0.5
    assert config.data.path == "somewhere/else"


def test_unknown_key_lists_the_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepoch = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]; valid keys: .*'epochs'"):
        load_config(path)
    with pytest.raises(ConfigError, match="valid tables"):
        load_config("tiny_cpu", ["optimizer.lr=1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.encoder='lstm'", "must be one of 'hstu', 'sasrec'"),
        ("train.epochs='many'", "must be of type int"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("similarity.user_components=1", "model.user_buckets"),
        ("model.dropout=1.5", "model.dropout"),
        ("epochs=3", "table.key=value"),
        ("train.negatives='per_item'", "must be one of 'per_position', 'per_sequence', 'shared'"),
        ("train.gating_kernel='triton'", "train.gating_kernel must be"),
        ("similarity.init='he'", "similarity.init must be"),
        ("similarity.item_dropout=1.0", "similarity.item_dropout must be in"),
        ("train.adam_beta2=1.0", "train.adam_beta2"),
        ("similarity.query_hidden_dim=-4", "similarity.query_hidden_dim"),
    ],
)
def test_bad_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("tiny_cpu", [override])


def test_unknown_preset_and_missing_file() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'nope'; presets: "):
        load_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("missing.toml")
