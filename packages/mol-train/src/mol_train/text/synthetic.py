"""A synthetic BEIR corpus and a tiny random transformer: text retrieval without weights or data.

For tests, CI benchmarks and trying the API: :func:`synthetic_beir` makes passages that each carry one
rare word of their own among common ones, and queries that name it; :func:`tiny_text_encoder` writes a
randomly initialised 2-layer BERT with a word-level vocabulary of exactly those words to a folder that
:func:`mol_train.text.load_text_encoder` reads.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from mol_core.errors import ConfigError
from mol_train.data.beir import BeirDataset

__all__ = ["COMMON_WORDS", "synthetic_beir", "synthetic_words", "tiny_text_encoder"]

#: The words every synthetic passage and query draws its filler from.
COMMON_WORDS = ("the", "of", "a", "study", "cells", "claim")


def synthetic_words(topics: int) -> list[str]:
    """The vocabulary of a synthetic corpus of ``topics`` passages: ``w0 .. w{topics-1}`` and the common
    words."""
    return [f"w{i}" for i in range(topics)] + list(COMMON_WORDS)


def synthetic_beir(topics: int = 24, queries_per_topic: int = 2, seed: int = 0) -> BeirDataset:
    """``topics`` passages ``d<i>`` (the word ``w<i>`` and 4 common words) and ``queries_per_topic``
    queries per passage (2 common words and ``w<i>``), each judged relevant (grade 1) to its passage."""
    if topics < 1 or queries_per_topic < 1:
        raise ConfigError(f"topics and queries_per_topic must be >= 1; got {topics}, {queries_per_topic}")
    rng = random.Random(seed)
    common = list(COMMON_WORDS)
    doc_ids = [f"d{i}" for i in range(topics)]
    texts = [" ".join([f"w{i}", *rng.sample(common, 4)]) for i in range(topics)]
    query_ids, queries, qrels = [], [], {}
    for i in range(topics):
        for j in range(queries_per_topic):
            query_ids.append(f"q{i}-{j}")
            queries.append(" ".join([*rng.sample(common, 2), f"w{i}"]))
            qrels[f"q{i}-{j}"] = {f"d{i}": 1}
    return BeirDataset(doc_ids, [""] * topics, texts, query_ids, queries, qrels)


def tiny_text_encoder(folder: str | Path, words: list[str], *, hidden: int = 32, seed: int = 0) -> Path:
    """Writes a 2-layer BERT of width ``hidden`` with random weights and a word-level vocabulary of
    ``words`` (plus BERT's special tokens) to ``folder``; returns it.

    Raises:
        ConfigError: ``transformers`` is not installed (the ``text`` extra).
    """
    try:
        import transformers
    except ImportError as err:
        raise ConfigError("text retrieval needs transformers: pip install 'mol-train[text]'") from err
    target = Path(folder)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer_class = getattr(transformers, "BertTokenizerFast")  # noqa: B009 (untyped in some releases)
    tokenizer = tokenizer_class(vocab={token: i for i, token in enumerate(tokens)})
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(tokens),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
