"""Training configuration: typed, frozen dataclasses loaded from TOML presets.

A config file has up to five tables, ``[data]``, ``[model]``, ``[similarity]``, ``[train]`` and
``[index]`` (a jointly trained index layer, off by default), whose keys are the fields below. Presets
ship with the package (``mol_train/configs/*.toml``) and are named by their file stem;
:func:`load_config` takes a preset name or a path, plus ``table.key=value`` overrides. An unknown table
or key is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mol_core.errors import ConfigError
from mol_core.similarity.gating import SCORE_KERNELS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DataConfig",
    "EncoderKind",
    "IndexSettings",
    "LossKind",
    "ModelConfig",
    "NegativeSampling",
    "SimilarityKind",
    "SimilaritySettings",
    "TrainConfig",
    "TrainSettings",
    "config_from_dict",
    "list_presets",
    "load_config",
]


class EncoderKind(str, enum.Enum):
    """The sequence encoder that turns a history into query representations."""

    HSTU = "hstu"
    SASREC = "sasrec"


class SimilarityKind(str, enum.Enum):
    """The similarity head between query representations and items."""

    MOL = "mol"
    DOT = "dot"


class LossKind(str, enum.Enum):
    """How negatives are drawn for the softmax loss."""

    SAMPLED = "sampled"  # R uniform negatives per position, accidental hits masked
    IN_BATCH = "in_batch"  # the batch's other positives, with logQ correction


class NegativeSampling(str, enum.Enum):
    """Which positions share the ``R`` uniformly sampled negatives of the sampled softmax."""

    PER_POSITION = "per_position"  # R fresh negatives for every (query, positive) pair (the reference's)
    PER_SEQUENCE = "per_sequence"  # R negatives per sequence, shared by its positions
    SHARED = "shared"  # R negatives for the whole batch


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the prepared data set lives and how sequences are cut."""

    path: str = ""  # a prepared data directory (mol-train data prepare), or "synthetic"
    max_len: int = 200  # most recent items kept per user (200 MovieLens, 50 Books)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The sequence encoder and the item embedding table."""

    encoder: EncoderKind = EncoderKind.HSTU
    item_dim: int = 50  # D: item embedding width = encoder width
    num_blocks: int = 8
    num_heads: int = 2
    attention_dim: int = 25  # per-head width of Q and K (HSTU)
    linear_dim: int = 25  # per-head width of V and U (HSTU)
    dropout: float = 0.2
    user_buckets: int = 0  # rows of the hashed user-id table; 0 = no user-id embedding


@dataclass(frozen=True, kw_only=True)
class SimilaritySettings:
    """The similarity head (mol_core.DotProductSimilarity or mol_core.MoLSimilarity)."""

    kind: SimilarityKind = SimilarityKind.MOL
    query_components: int = 8  # Pq, including user-id components
    item_components: int = 4  # Px
    component_dim: int = 64  # d
    temperature: float = 0.05
    gating_hidden_dim: int = 128
    gating_dropout: float = 0.2
    user_components: int = 0  # how many of Pq come from the hashed user id (needs model.user_buckets > 0)
    user_dropout: float = 0.0
    l2_normalize: bool = True  # dot product only: cosine / temperature
    # MoL only, the reference recipe's elements (docs/mol-train-models.md, "The MoL head"):
    query_layer_norm: bool = False  # LayerNorm (no affine) on the encoder output before the query side
    query_hidden_dim: int = 0  # SwiGLU hidden width of the query projection; 0 = one linear map
    item_dropout: float = 0.0  # dropout on item embeddings before the item projection
    user_direct: bool = False  # the user-id embedding (width Pu * d) is the user component, no projection
    init: str = "torch"  # "torch" (PyTorch defaults) | "xavier" (Xavier-normal weights, zero biases)


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """The optimisation recipe."""

    epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0  # decoupled (AdamW) weight decay of every parameter, tables included
    adam_beta2: float = 0.999  # AdamW's second-moment decay (the reference recipe uses 0.98)
    loss: LossKind = LossKind.SAMPLED
    num_negatives: int = 128
    negatives: NegativeSampling = NegativeSampling.PER_SEQUENCE
    shared_negatives: bool = False  # older spelling of negatives = "shared"; true overrides negatives
    mi_weight: float = 0.001  # MI load-balancing loss weight (MoL only)
    user_l2_weight: float = 0.0  # weight of the mean squared norm of the user-id embeddings (MoL only)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_every: int = 1  # epochs between validation runs
    early_stopping_patience: int = 10  # validation runs without NDCG@10 improvement before stopping; 0 = off
    bf16: bool = True  # bf16 autocast on GPU (ignored on CPU)
    gating_bf16: bool = False  # MoL: the pair-wise gating MLP in bf16 (CPU with native bf16, or GPU)
    gating_kernel: str = "eager"  # MoL training: "eager" | "compiled" | "blocked" | "fused"
    seed: int = 42
    max_steps_per_epoch: int = 0  # 0 = a full pass over the training users
    time_budget_seconds: float = 0.0  # stop after the epoch that crosses this much training time; 0 = none
    sharding: str = "data_parallel"  # "data_parallel" | "row_wise" | "table_wise" (mol_train.distributed)
    table_optimizer: str = "adam"  # "adam" | "rowwise_adagrad" | "adagrad" | "sgd"; fused Adam needs CUDA
    table_learning_rate: float = 0.0  # 0 = the same as learning_rate


@dataclass(frozen=True, kw_only=True)
class IndexSettings:
    """An index layer trained jointly with the model (needs mol-index: ``pip install mol-train[index]``).

    Training runs unquantized for ``warmup_steps`` optimizer steps, then the layer is warm-started by
    k-means on the item side of the whole corpus and trained with the model from there on (see
    mol_index.layers). The exported bundle carries the trained layer, from which
    ``mol-index build --kind pq|hierarchical --bundle`` writes the index without another k-means pass.
    """

    kind: str = "none"  # "none" | "pq" (Poeem) | "hierarchical" (HSNN)
    warmup_steps: int = 100  # optimizer steps before the layer is warm-started and switched on
    weight: float = 1.0  # weight of the layer's own loss in the training loss
    # pq: an item component embedding is stored as a coarse id + `subspaces` codes of `codebook_size`
    coarse: int = 1
    subspaces: int = 8
    codebook_size: int = 256
    rotation: bool = True  # learned Givens rotation before the subspace split
    commitment: float = 0.25
    ema_decay: float = 0.99  # codebooks follow their assigned embeddings (EMA); 0 = learned by gradient
    # hierarchical: clusters per level (level l has branching[0] * ... * branching[l] clusters)
    branching: tuple[int, ...] = (16, 8)
    routing_weight: float = 1.0
    clustering_weight: float = 1.0
    assignment_temperature: float = 0.1

    def layer_options(self) -> dict[str, Any]:
        """The constructor arguments of the layer ``kind`` names."""
        if self.kind == "pq":
            return {
                "coarse": self.coarse,
                "subspaces": self.subspaces,
                "codebook_size": self.codebook_size,
                "rotation": self.rotation,
                "commitment": self.commitment,
                "ema_decay": self.ema_decay,
            }
        return {
            "branching": tuple(self.branching),
            "routing_weight": self.routing_weight,
            "clustering_weight": self.clustering_weight,
            "temperature": self.assignment_temperature,
        }


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A whole training configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    index: IndexSettings = field(default_factory=IndexSettings)

    def validate(self) -> TrainConfig:
        """Checks cross-field consistency; returns self. Raises ConfigError naming the fields."""
        positive = {
            "data.max_len": self.data.max_len,
            "model.item_dim": self.model.item_dim,
            "model.num_blocks": self.model.num_blocks,
            "model.num_heads": self.model.num_heads,
            "model.attention_dim": self.model.attention_dim,
            "model.linear_dim": self.model.linear_dim,
            "similarity.query_components": self.similarity.query_components,
            "similarity.item_components": self.similarity.item_components,
            "similarity.component_dim": self.similarity.component_dim,
            "train.epochs": self.train.epochs,
            "train.batch_size": self.train.batch_size,
            "train.num_negatives": self.train.num_negatives,
            "train.eval_every": self.train.eval_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1; got {value}")
        if not 0.0 <= self.model.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1); got {self.model.dropout}")
        if self.train.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be > 0; got {self.train.learning_rate}")
        if self.similarity.user_components > 0 and self.model.user_buckets < 1:
            raise ConfigError(
                "similarity.user_components > 0 needs a user-id table: set model.user_buckets >= 1"
            )
        if self.train.sharding not in ("data_parallel", "row_wise", "table_wise"):
            raise ConfigError(
                "train.sharding must be 'data_parallel', 'row_wise' or 'table_wise'; "
                f"got {self.train.sharding!r}"
            )
        if self.train.table_optimizer not in ("adam", "rowwise_adagrad", "adagrad", "sgd"):
            raise ConfigError(
                "train.table_optimizer must be 'adam', 'rowwise_adagrad', 'adagrad' or 'sgd'; "
                f"got {self.train.table_optimizer!r}"
            )
        sim = self.similarity
        for name, fraction in (
            ("similarity.item_dropout", sim.item_dropout),
            ("similarity.user_dropout", sim.user_dropout),
            ("similarity.gating_dropout", sim.gating_dropout),
        ):
            if not 0.0 <= fraction < 1.0:
                raise ConfigError(f"{name} must be in [0, 1); got {fraction}")
        if sim.query_hidden_dim < 0:
            raise ConfigError(
                f"similarity.query_hidden_dim must be >= 0 (0 = linear); got {sim.query_hidden_dim}"
            )
        if sim.init not in ("torch", "xavier"):
            raise ConfigError(f"similarity.init must be 'torch' or 'xavier'; got {sim.init!r}")
        if self.train.gating_kernel not in SCORE_KERNELS:
            raise ConfigError(
                f"train.gating_kernel must be one of {', '.join(map(repr, SCORE_KERNELS))}; "
                f"got {self.train.gating_kernel!r}"
            )
        if not 0.0 <= self.train.adam_beta2 < 1.0:
            raise ConfigError(f"train.adam_beta2 must be in [0, 1); got {self.train.adam_beta2}")
        if self.train.weight_decay < 0 or self.train.user_l2_weight < 0:
            raise ConfigError(
                "train.weight_decay and train.user_l2_weight must be >= 0; "
                f"got {self.train.weight_decay}, {self.train.user_l2_weight}"
            )
        if self.similarity.kind is SimilarityKind.DOT and self.similarity.user_components > 0:
            raise ConfigError("similarity.user_components is only supported with similarity.kind = 'mol'")
        self._validate_index()
        return self

    @property
    def negative_sampling(self) -> NegativeSampling:
        """How negatives are drawn: ``train.negatives``, or ``shared`` when ``train.shared_negatives``."""
        return NegativeSampling.SHARED if self.train.shared_negatives else self.train.negatives

    @property
    def user_dim(self) -> int:
        """Du, the width of the user-id table: ``Pu * d`` when ``similarity.user_direct``, else D."""
        sim = self.similarity
        return sim.user_components * sim.component_dim if sim.user_direct else self.model.item_dim

    def _validate_index(self) -> None:
        index = self.index
        if index.kind not in ("none", "pq", "hierarchical"):
            raise ConfigError(f"index.kind must be 'none', 'pq' or 'hierarchical'; got {index.kind!r}")
        if index.kind == "none":
            return
        if index.warmup_steps < 0 or index.weight < 0:
            raise ConfigError(
                f"index.warmup_steps and index.weight must be >= 0; got {index.warmup_steps}, {index.weight}"
            )
        width = (
            self.model.item_dim
            if self.similarity.kind is SimilarityKind.DOT
            else self.similarity.component_dim
        )
        if index.kind == "pq":
            if index.subspaces < 1 or width % index.subspaces:
                raise ConfigError(
                    f"index.subspaces = {index.subspaces} must divide the item component width {width} "
                    "(model.item_dim for dot, similarity.component_dim for mol)"
                )
            if index.coarse < 1 or index.codebook_size < 2:
                raise ConfigError(
                    f"index.coarse must be >= 1 and index.codebook_size >= 2; got {index.coarse}, "
                    f"{index.codebook_size}"
                )
        elif not index.branching or any(b < 2 for b in index.branching):
            raise ConfigError(
                f"index.branching must be a list of clusters per level, each >= 2; got {index.branching}"
            )


_TABLES: dict[str, type[Any]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "similarity": SimilaritySettings,
    "train": TrainSettings,
    "index": IndexSettings,
}


def list_presets() -> list[str]:
    """Names of the presets shipped with mol-train."""
    folder = resources.files("mol_train") / "configs"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_config(source: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Loads a preset (by name) or a TOML file, applies ``table.key=value`` overrides, and validates.

    Args:
        source: a preset name from :func:`list_presets` or a path to a TOML file.
        overrides: e.g. ``["train.epochs=3", "data.path=prepared/ml-1m"]``; values are parsed as TOML
            (bare words become strings).

    Raises:
        ConfigError: unknown preset, table or key (the message lists the valid ones), a value of the
            wrong type, or an inconsistent configuration.
    """
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text, origin = path.read_text(), str(path)
    else:
        presets = list_presets()
        if str(source) not in presets:
            raise ConfigError(
                f"unknown preset {source!r}; presets: {', '.join(presets)} (or give a .toml path)"
            )
        text = (resources.files("mol_train") / "configs" / f"{source}.toml").read_text()
        origin = f"preset {source}"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML: {exc}") from exc
    for item in overrides or []:
        _apply_override(raw, item)
    return _build(raw, origin).validate()


def config_from_dict(raw: dict[str, Any], origin: str = "config") -> TrainConfig:
    """Builds and validates a config from ``{"table": {"key": value}}`` (e.g. a run's config.json).

    Raises:
        ConfigError: as :func:`load_config`; ``origin`` names the source in messages.
    """
    return _build(raw, origin).validate()


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    table, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"override {item!r} must look like table.key=value, e.g. train.epochs=3")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    raw.setdefault(table, {})[name] = parsed


def _build(raw: dict[str, Any], origin: str) -> TrainConfig:
    unknown_tables = set(raw) - set(_TABLES)
    if unknown_tables:
        raise ConfigError(
            f"{origin}: unknown table(s) {sorted(unknown_tables)}; valid tables: {sorted(_TABLES)}"
        )
    parts = {
        name: _build_table(cls, raw.get(name, {}), f"{origin} [{name}]") for name, cls in _TABLES.items()
    }
    return TrainConfig(**parts)


def _build_table(cls: type[Any], values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table of key = value pairs")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _coerce(hints[name], value, f"{where} {name}") for name, value in values.items()})


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if typing.get_origin(hint) is tuple:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{where} must be a list of integers; got {value!r}")
        return tuple(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in hint)
            raise ConfigError(f"{where} must be one of {choices}; got {value!r}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = hint if isinstance(hint, type) else None
    if isinstance(hint, types.UnionType):
        expected = None
    if expected is not None and (
        not isinstance(value, expected) or (expected is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where} must be of type {expected.__name__}; got {value!r}")
    return value
