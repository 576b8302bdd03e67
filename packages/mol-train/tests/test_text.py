"""Text retrieval on a tiny randomly initialised BERT and a synthetic BEIR corpus (no weights, no data).

Checks: loading from a folder (and clear errors), which weights train, the poolings and the dot head
against hand computations, the accidental-hit masking, that training on judged pairs lifts the metrics
of a corpus where every query shares a rare word with its passage, and evaluation against a brute-force
ranking through mol_core.metrics.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="text retrieval needs the text extra")

from mol_core.errors import ConfigError  # noqa: E402
from mol_core.metrics import relevance_metrics  # noqa: E402
from mol_train.data.beir import BeirDataset  # noqa: E402
from mol_train.text import (  # noqa: E402
    LearnedPoolings,
    TextTrainConfig,
    build_text_retriever,
    evaluate_text,
    fit_text,
    load_text_encoder,
    mean_pooling,
    set_trainable,
    synthetic_beir,
    synthetic_words,
    tiny_text_encoder,
    training_pairs,
)

TOPICS = 24
WORDS = synthetic_words(TOPICS)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a word-level vocabulary, saved as a folder."""
    return tiny_text_encoder(tmp_path_factory.mktemp("tiny-bert"), WORDS)


def _corpus(seed: int = 0) -> BeirDataset:
    """TOPICS passages, each with its own rare word among common ones; 2 queries per passage naming it."""
    return synthetic_beir(TOPICS, 2, seed=seed)


def test_loading_from_a_folder_and_refusing_anything_else(encoder_dir: Path, tmp_path: Path) -> None:
    encoder = load_text_encoder(encoder_dir)
    assert encoder.hidden_size == 32
    tokens = encoder.tokenize(["w1 the cells", "w2"], max_tokens=16)
    assert tokens["input_ids"].shape == tokens["attention_mask"].shape == (2, 5)  # [CLS] ... [SEP]
    assert tokens["input_ids"][0].tolist() == [2, *(5 + WORDS.index(w) for w in ("w1", "the", "cells")), 3]
    assert encoder.token_states(tokens).shape == (2, 5, 32)
    with pytest.raises(ConfigError, match=r"no text encoder at .*expected a folder with config\.json"):
        load_text_encoder(tmp_path / "nothing")


def test_set_trainable_freezes_or_opens_the_top_layers(encoder_dir: Path) -> None:
    model = load_text_encoder(encoder_dir).model
    layer_size = sum(p.numel() for p in model.encoder.layer[-1].parameters())
    assert set_trainable(model, "none") == 0
    assert set_trainable(model, "top:1") == layer_size
    assert all(p.requires_grad for p in model.encoder.layer[-1].parameters())
    assert not any(p.requires_grad for p in model.encoder.layer[0].parameters())
    assert set_trainable(model, "all") == sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match="the encoder has 2 layers"):
        set_trainable(model, "top:3")
    with pytest.raises(ConfigError, match="trainable must be none"):
        set_trainable(model, "some")


def test_poolings_start_as_the_mean_and_the_dot_head_is_the_cosine(encoder_dir: Path) -> None:
    states = torch.randn(2, 4, 32)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    by_hand = torch.stack([states[0, :3].mean(0), states[1, 0]])
    torch.testing.assert_close(mean_pooling(states, mask), by_hand)
    pooled = LearnedPoolings(32, 3)(states, mask)  # (2, 3, 32)
    for k in range(3):
        torch.testing.assert_close(pooled[:, k], by_hand)
    retriever = build_text_retriever(load_text_encoder(encoder_dir), "dot", temperature=0.5).eval()
    with torch.no_grad():
        query, items = retriever.query_side(["w1 the"]), retriever.item_side(["w1 cells", "w2 of a"])
        scores = retriever.similarity.score_pairs(query, items)  # (1, 2)
        encoder = retriever.text_encoder
        reps = [
            mean_pooling(encoder.token_states(t), t["attention_mask"])
            for t in (encoder.tokenize([x], 64) for x in ["w1 the", "w1 cells", "w2 of a"])
        ]
    cosine = torch.nn.functional.cosine_similarity
    want = torch.tensor([[float(cosine(reps[0], reps[1])), float(cosine(reps[0], reps[2]))]]) / 0.5
    torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-5)
    mol = build_text_retriever(
        load_text_encoder(encoder_dir), "mol", poolings=2, temperature=0.5, symmetry_noise=0.0
    ).eval()  # starts as the dot head
    with torch.no_grad():
        mol_scores = mol.similarity.score_pairs(
            mol.query_side(["w1 the"]), mol.item_side(["w1 cells", "w2 of a"])
        )
    torch.testing.assert_close(mol_scores, want, rtol=1e-4, atol=1e-4)
    assert mol.query_side(["w1"]).embeddings.shape == (1, 4, 32)  # Pq = 4 components of width H = 32
    scrambled = build_text_retriever(
        load_text_encoder(encoder_dir), "mol", poolings=2, component_dim=8, start_from_dot=False
    )
    assert scrambled.item_side(["w1", "w2"]).embeddings.shape == (2, 4, 8)
    with pytest.raises(ConfigError, match="start_from_dot needs component_dim = the encoder's width 32"):
        build_text_retriever(load_text_encoder(encoder_dir), "mol", component_dim=8)
    with pytest.raises(ConfigError, match="head must be one of dot, mol"):
        build_text_retriever(load_text_encoder(encoder_dir), "bm25")


def test_training_pairs_and_config_checks() -> None:
    data = _corpus()
    pairs = training_pairs(data)
    assert len(pairs) == 2 * TOPICS
    assert pairs[:2] == [(0, 0), (1, 0)]
    with pytest.raises(ConfigError, match=r"text\.batch_size must be >= 2"):
        TextTrainConfig(batch_size=1)
    with pytest.raises(ConfigError, match=r"text\.trainable must be none, all or top:N"):
        TextTrainConfig(trainable="top")


@pytest.mark.parametrize("head", ["dot", "mol"])
def test_fine_tuning_lifts_the_metrics_of_an_untrained_encoder(encoder_dir: Path, head: str) -> None:
    data = _corpus()
    torch.manual_seed(0)
    sizes = {"poolings": 2, "query_components": 2, "item_components": 2}
    retriever = build_text_retriever(load_text_encoder(encoder_dir), head, **sizes)
    before = evaluate_text(retriever, data, depth=10)
    config = TextTrainConfig(
        trainable="all", epochs=12, batch_size=8, num_negatives=4, learning_rate=3e-3,
        encoder_learning_rate=3e-3, mi_weight=0.1 if head == "mol" else 0.0,
    )  # fmt: skip
    losses = fit_text(retriever, data, config)
    after = evaluate_text(retriever, data, depth=10)
    assert len(losses) == 12 * (2 * TOPICS // 8)
    assert sum(losses[-6:]) < sum(losses[:6])
    assert after["ndcg@10"] > before["ndcg@10"] + 0.2, (before, after)
    assert after["recall@10"] > 0.8


def test_evaluation_equals_a_brute_force_ranking(encoder_dir: Path) -> None:
    data = _corpus(seed=3)
    encoder = load_text_encoder(encoder_dir)
    retriever = build_text_retriever(encoder, "mol", poolings=2, component_dim=8, start_from_dot=False).eval()
    got = evaluate_text(retriever, data, batch_size=5, depth=20)
    documents = data.documents()
    rankings = {}
    with torch.no_grad():
        for query_id, text in zip(data.query_ids, data.queries, strict=True):
            query = retriever.query_side([text])
            score = retriever.similarity.score_pairs
            scores = [float(score(query, retriever.item_side([d]))) for d in documents]
            order = sorted(range(len(documents)), key=lambda i: -scores[i])[:20]
            rankings[query_id] = [data.doc_ids[i] for i in order]
    want = relevance_metrics(rankings, data.qrels, ks=(10, 20))
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name


def test_accidental_hits_are_masked(encoder_dir: Path) -> None:
    """A passage relevant to two queries of one batch is not a negative of either: with one passage for
    every query the in-batch softmax has nothing left but the positive, and the loss is exactly 0."""
    qrels = {"q0": {"d0": 1}, "q1": {"d0": 1}}
    data = BeirDataset(["d0"], [""], ["w1 the cells"], ["q0", "q1"], ["w1 the", "w1 cells"], qrels)
    retriever = build_text_retriever(load_text_encoder(encoder_dir), "dot")
    losses = fit_text(retriever, data, TextTrainConfig(trainable="top:1", batch_size=2, num_negatives=0))
    assert losses == [0.0]
    with pytest.raises(ConfigError, match="nothing to train"):  # a dot head has no weights of its own
        fit_text(retriever, data, TextTrainConfig(trainable="none", batch_size=2))
