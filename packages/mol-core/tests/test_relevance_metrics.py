"""Retrieval metrics against relevance judgments: hand computations and trec_eval's conventions."""

from __future__ import annotations

import math

import pytest

from mol_core import ConfigError
from mol_core.metrics import relevance_metrics


def test_hand_computed_query_with_graded_relevance() -> None:
    # d2 (grade 2) at rank 3, d5 (grade 1) at rank 1, d9 (grade 1) not retrieved; d7 judged 0.
    qrels = {"q": {"d2": 2, "d5": 1, "d9": 1, "d7": 0}}
    got = relevance_metrics({"q": ["d5", "d7", "d2", "d1"]}, qrels, ks=(1, 3, 10))
    dcg3 = 1 / math.log2(2) + 2 / math.log2(4)
    idcg3 = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg@1"] == pytest.approx(1 / 2)  # gain 1 against the ideal first gain 2
    assert got["ndcg@3"] == pytest.approx(dcg3 / idcg3)
    assert got["ndcg@10"] == pytest.approx(dcg3 / idcg3)  # nothing relevant after rank 3
    assert got["recall@1"] == pytest.approx(1 / 3)
    assert got["recall@3"] == pytest.approx(2 / 3)
    assert got["mrr@1"] == 1.0
    assert got["queries"] == 1.0


def test_mean_over_judged_queries_only_and_mrr_cut() -> None:
    qrels = {"a": {"x": 1}, "b": {"y": 1}, "c": {"z": 0}}  # c has no relevant document: skipped
    rankings = {"a": ["x"], "b": ["p", "q", "y"], "other": ["x"]}
    got = relevance_metrics(rankings, qrels, ks=(2, 3))
    assert got["queries"] == 2.0
    assert got["mrr@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert got["mrr@3"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert got["recall@2"] == pytest.approx(0.5)
    assert got["ndcg@3"] == pytest.approx((1.0 + 1 / math.log2(4)) / 2)


def test_a_perfect_ranking_scores_one() -> None:
    qrels = {"q": {"a": 3, "b": 2, "c": 1}}
    got = relevance_metrics({"q": ["a", "b", "c", "d"]}, qrels, ks=(2, 10))
    assert got["ndcg@2"] == pytest.approx(1.0)
    assert got["ndcg@10"] == pytest.approx(1.0)
    assert got["recall@10"] == 1.0
    swapped = relevance_metrics({"q": ["b", "a", "c"]}, qrels, ks=(2,))
    assert swapped["ndcg@2"] < 1.0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="no query with a relevant document"):
        relevance_metrics({"q": ["a"]}, {"q": {"a": 0}})
    with pytest.raises(ConfigError, match=r"1 judged queries have no ranking, e.g. \['q2'\]"):
        relevance_metrics({"q": ["a"]}, {"q": {"a": 1}, "q2": {"b": 1}})
    with pytest.raises(ConfigError, match="lists a document more than once"):
        relevance_metrics({"q": ["a", "a"]}, {"q": {"a": 1}})
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        relevance_metrics({"q": ["a"]}, {"q": {"a": 1}}, ks=(0,))
