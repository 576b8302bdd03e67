"""Configs: every preset loads, overrides apply, and bad keys or values are refused with the valid ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from mol_core.errors import ConfigError
from mol_train.config import EncoderKind, LossKind, SimilarityKind, list_presets, load_config


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
