"""A synthetic BEIR corpus, a tiny random transformer and a tiny cross-encoder: text retrieval without
weights or data.

For tests, CI benchmarks and trying the API: :func:`synthetic_beir` makes passages that each carry one
rare word of their own among common ones, and queries that name it; :func:`tiny_text_encoder` writes a
randomly initialised 2-layer BERT with a word-level vocabulary of exactly those words to a folder that
:func:`mol_train.text.load_text_encoder` reads; :func:`tiny_cross_encoder` writes an ONNX model with a
word-level tokenizer that :func:`mol_train.text.load_cross_encoder` reads.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from mol_core.atomic import write_bytes_atomically, write_text_atomically
from mol_core.errors import ConfigError
from mol_train.data.beir import BeirDataset

__all__ = ["COMMON_WORDS", "synthetic_beir", "synthetic_words", "tiny_cross_encoder", "tiny_text_encoder"]

#: The special tokens of the tiny models' vocabularies, in id order (ids 0 to 4).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

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
    tokens = [*SPECIAL_TOKENS, *words]
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


def tiny_cross_encoder(folder: str | Path, words: list[str], *, weights: list[float] | None = None) -> Path:
    """Writes an ONNX cross-encoder and its ``tokenizer.json`` to ``folder``; returns it.

    The tokenizer splits on whitespace and punctuation into ``words`` (plus the special tokens; anything
    else is ``[UNK]``) and makes ``[CLS] query [SEP] passage [SEP]`` with type ids 0 / 1. The model scores
    a pair by the weighted overlap of the two word bags: ``logit = sum_v c_q(v) c_p(v) w_v`` with
    ``c_q(v)``, ``c_p(v)`` the counts of word ``v`` in the query and the passage (special tokens never
    count) and ``w_v = weights[v]`` (default 1.0 for every word). Output ``logits (B, 1)``.

    Raises:
        ConfigError: ``onnx`` or ``tokenizers`` is not installed (the ``rerank`` extra), or ``weights``
            does not have one value per word.
    """
    try:
        import onnx
        from onnx import TensorProto, helper
        from tokenizers import Tokenizer, models, pre_tokenizers, processors
    except ImportError as err:
        raise ConfigError(
            "tiny_cross_encoder needs onnx and tokenizers: pip install 'mol-train[rerank]'"
        ) from err
    if weights is not None and len(weights) != len(words):
        raise ConfigError(f"weights must have one value per word ({len(words)}); got {len(weights)}")
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    vocabulary = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])],
    )
    write_text_atomically(target / "tokenizer.json", tokenizer.to_str())

    size = len(vocabulary)
    word_weights = [0.0] * len(SPECIAL_TOKENS) + (
        [1.0] * len(words) if weights is None else [float(w) for w in weights]
    )
    nodes = [
        helper.make_node("OneHot", ["input_ids", "depth", "on_off"], ["hot"], axis=-1),  # (B, T, V)
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),  # (B, T)
        helper.make_node("Cast", ["token_type_ids"], ["second"], to=TensorProto.FLOAT),  # (B, T)
        helper.make_node("Mul", ["mask", "second"], ["in_passage"]),
        helper.make_node("Sub", ["mask", "in_passage"], ["in_query"]),
        helper.make_node("Unsqueeze", ["in_query", "last"], ["query_tokens"]),  # (B, T, 1)
        helper.make_node("Unsqueeze", ["in_passage", "last"], ["passage_tokens"]),
        helper.make_node("Mul", ["hot", "query_tokens"], ["query_hot"]),
        helper.make_node("Mul", ["hot", "passage_tokens"], ["passage_hot"]),
        helper.make_node("ReduceSum", ["query_hot", "tokens_axis"], ["query_bag"], keepdims=0),  # (B, V)
        helper.make_node("ReduceSum", ["passage_hot", "tokens_axis"], ["passage_bag"], keepdims=0),
        helper.make_node("Mul", ["query_bag", "passage_bag"], ["overlap"]),
        helper.make_node("Mul", ["overlap", "word_weights"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "tokens_axis"], ["logits"], keepdims=1),  # (B, 1)
    ]
    constants = [
        helper.make_tensor("depth", TensorProto.INT64, [], [size]),
        helper.make_tensor("on_off", TensorProto.FLOAT, [2], [0.0, 1.0]),
        helper.make_tensor("last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("tokens_axis", TensorProto.INT64, [1], [1]),
        helper.make_tensor("word_weights", TensorProto.FLOAT, [size], word_weights),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "tokens"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])
    graph = helper.make_graph(nodes, "tiny_cross_encoder", inputs, [output], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by onnxruntime releases of the last years
    onnx.checker.check_model(model)
    write_bytes_atomically(target / "model.onnx", model.SerializeToString())
    return target
