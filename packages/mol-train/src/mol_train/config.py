"""Training configuration: typed, frozen dataclasses loaded from TOML presets.

A config file has up to five tables, ``[data]``, ``[model]``, ``[similarity]``, ``[train]`` and
``[index]`` (a jointly trained index layer, off by default), whose keys are the fields below. Presets
ship with the package (``mol_train/configs/*.toml``) and are named by their file stem;
:func:`load_config` takes a preset name or a path, plus ``table.key=value`` overrides. An unknown table
or key is an error that lists the valid ones.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mol_core.errors import ConfigError
from mol_core.settings import check_settings, setting, settings_from_mapping
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
    max_len: int = setting(200, minimum=1)  # most recent items kept per user (200 MovieLens, 50 Books)

    def __post_init__(self) -> None:
        check_settings(self, prefix="data")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The sequence encoder and the item embedding table."""

    encoder: EncoderKind = EncoderKind.HSTU
    item_dim: int = setting(50, minimum=1)  # D: item embedding width = encoder width
    num_blocks: int = setting(8, minimum=1)
    num_heads: int = setting(2, minimum=1)
    attention_dim: int = setting(25, minimum=1)  # per-head width of Q and K (HSTU)
    linear_dim: int = setting(25, minimum=1)  # per-head width of V and U (HSTU)
    dropout: float = setting(0.2, minimum=0, below=1)
    user_buckets: int = setting(0, minimum=0)  # rows of the hashed user-id table; 0 = no user-id embedding

    def __post_init__(self) -> None:
        check_settings(self, prefix="model")


@dataclass(frozen=True, kw_only=True)
class SimilaritySettings:
    """The similarity head (mol_core.DotProductSimilarity or mol_core.MoLSimilarity)."""

    kind: SimilarityKind = SimilarityKind.MOL
    query_components: int = setting(8, minimum=1)  # Pq, including user-id components
    item_components: int = setting(4, minimum=1)  # Px
    component_dim: int = setting(64, minimum=1)  # d
    temperature: float = setting(0.05, above=0)
    gating_hidden_dim: int = setting(128, minimum=1)
    gating_dropout: float = setting(0.2, minimum=0, below=1)
    # how many of Pq come from the hashed user id (needs model.user_buckets > 0)
    user_components: int = setting(0, minimum=0)
    user_dropout: float = setting(0.0, minimum=0, below=1)
    l2_normalize: bool = True  # dot product only: cosine / temperature
    # MoL only, the reference recipe's elements (docs/mol-train-models.md, "The MoL head"):
    query_layer_norm: bool = False  # LayerNorm (no affine) on the encoder output before the query side
    query_hidden_dim: int = setting(0, minimum=0)  # SwiGLU hidden width of the query projection; 0 = linear
    item_dropout: float = setting(0.0, minimum=0, below=1)  # dropout on item embeddings before the projection
    user_direct: bool = False  # the user-id embedding (width Pu * d) is the user component, no projection
    # "torch" (PyTorch defaults) | "xavier" (Xavier-normal weights, zero biases)
    init: str = setting("torch", choices=("torch", "xavier"))

    def __post_init__(self) -> None:
        check_settings(self, prefix="similarity")


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """The optimisation recipe."""

    epochs: int = setting(100, minimum=1)
    batch_size: int = setting(128, minimum=1)
    learning_rate: float = setting(1e-3, above=0)
    # decoupled (AdamW) weight decay of every parameter, tables included
    weight_decay: float = setting(0.0, minimum=0)
    # AdamW's second-moment decay (the reference recipe uses 0.98)
    adam_beta2: float = setting(0.999, minimum=0, below=1)
    loss: LossKind = LossKind.SAMPLED
    num_negatives: int = setting(128, minimum=1)
    negatives: NegativeSampling = NegativeSampling.PER_SEQUENCE
    shared_negatives: bool = False  # older spelling of negatives = "shared"; true overrides negatives
    mi_weight: float = 0.001  # MI load-balancing loss weight (MoL only)
    # weight of the mean squared norm of the user-id embeddings (MoL only)
    user_l2_weight: float = setting(0.0, minimum=0)
    grad_clip: float = setting(1.0, minimum=0)  # max global gradient norm; 0 disables clipping
    eval_every: int = setting(1, minimum=1)  # epochs between validation runs
    # validation runs without NDCG@10 improvement before stopping; 0 = off
    early_stopping_patience: int = setting(10, minimum=0)
    bf16: bool = True  # bf16 autocast on GPU (ignored on CPU)
    gating_bf16: bool = False  # MoL: the pair-wise gating MLP in bf16 (CPU with native bf16, or GPU)
    # MoL training: "eager" | "compiled" | "blocked" | "fused" | "fused_cpp"
    gating_kernel: str = setting("eager", choices=SCORE_KERNELS)
    seed: int = 42
    max_steps_per_epoch: int = setting(0, minimum=0)  # 0 = a full pass over the training users
    # stop after the epoch that crosses this much training time; 0 = none
    time_budget_seconds: float = setting(0.0, minimum=0)
    # "data_parallel" | "row_wise" | "table_wise" (mol_train.distributed)
    sharding: str = setting("data_parallel", choices=("data_parallel", "row_wise", "table_wise"))
    # "adam" | "rowwise_adagrad" | "adagrad" | "sgd"; fused Adam needs CUDA
    table_optimizer: str = setting("adam", choices=("adam", "rowwise_adagrad", "adagrad", "sgd"))
    table_learning_rate: float = setting(0.0, minimum=0)  # 0 = the same as learning_rate

    def __post_init__(self) -> None:
        check_settings(self, prefix="train")


@dataclass(frozen=True, kw_only=True)
class IndexSettings:
    """An index layer trained jointly with the model (needs mol-index: ``pip install mol-train[index]``).

    Training runs unquantized for ``warmup_steps`` optimizer steps, then the layer is warm-started by
    k-means on the item side of the whole corpus and trained with the model from there on (see
    mol_index.layers). The exported bundle carries the trained layer, from which
    ``mol-index build --kind pq|hierarchical --bundle`` writes the index without another k-means pass.
    """

    kind: str = setting("none", choices=("none", "pq", "hierarchical"))  # "pq" Poeem, "hierarchical" HSNN
    # optimizer steps before the layer is warm-started and switched on
    warmup_steps: int = setting(100, minimum=0)
    weight: float = setting(1.0, minimum=0)  # weight of the layer's own loss in the training loss
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

    def __post_init__(self) -> None:
        check_settings(self, prefix="index")

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
        """Checks the rules between fields (each field checks its own type and range when its table is
        built); returns self. Raises ConfigError naming the fields."""
        if self.similarity.user_components > 0 and self.model.user_buckets < 1:
            raise ConfigError(
                "similarity.user_components > 0 needs a user-id table: set model.user_buckets >= 1"
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
        if index.kind == "none":
            return
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
    """Names of the presets shipped with mol-train (the file stems of ``mol_train/configs/*.toml``), sorted,
    e.g. ``["ml1m_hstu_large_dot", "ml1m_hstu_large_mol", ..., "tiny_cpu"]``."""
    folder = resources.files("mol_train") / "configs"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_config(source: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Loads a preset (by name) or a TOML file, applies ``table.key=value`` overrides, and validates.

    Args:
        source: a preset name from :func:`list_presets` or a path to a TOML file.
        overrides: e.g. ``["train.epochs=3", "data.path=prepared/ml-1m"]``; values are parsed as TOML
            (bare words become strings).

    Returns:
        the validated configuration.

    Raises:
        ConfigError: unknown preset, table or key (the message lists the valid ones), a value of the
            wrong type, or an inconsistent configuration.

    Example::

        config = load_config("ml1m_hstu_large_mol", ["model.num_blocks=2", "data.max_len=50"])
        config.similarity.query_components  # 8
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

    Returns:
        the configuration; missing keys take their defaults.

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
        name: settings_from_mapping(cls, raw.get(name, {}), f"{origin} [{name}]")
        for name, cls in _TABLES.items()
    }
    return TrainConfig(**parts)
