"""Retrieval metrics with relevance judgments (qrels), as BEIR reports them through trec_eval.

Each query has judged documents with integer relevance grades (a grade of 0 or less is not relevant) and
a ranked list of retrieved document ids, best first. Per query, with ``rel(d)`` the judged grade of
document ``d`` (0 if unjudged):

- ``ndcg@k = DCG@k / IDCG@k``, ``DCG@k = sum_{r <= k} rel(d_r) / log2(r + 1)`` (linear gain, trec_eval's
  ``ndcg_cut``); ``IDCG@k`` is the same sum over the judged grades sorted best first;
- ``recall@k`` = relevant documents in the top ``k`` / relevant documents judged;
- ``mrr@k`` = ``1 / r`` of the first relevant document at rank ``r <= k``, else 0.

Each metric is the mean over the queries that have at least one relevant document (trec_eval skips the
others); every such query must have a ranking. A ranking may list fewer than ``k`` documents.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mol_core._checks import check_positive_int
from mol_core.errors import ConfigError

__all__ = ["relevance_metrics"]


def relevance_metrics(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    ks: Sequence[int] = (10, 100),
) -> dict[str, float]:
    """nDCG@k, Recall@k and MRR@k of ranked document ids against relevance judgments.

    Args:
        rankings: query id -> retrieved document ids, best first (queries without judgments are ignored).
        qrels: query id -> {document id: relevance grade}.
        ks: the cut-offs.

    Returns:
        ``{"ndcg@10": ..., "recall@10": ..., "mrr@10": ..., ...}`` for every ``k`` in ``ks``, and
        ``"queries"``: how many queries were averaged.

    Raises:
        ConfigError: a cut-off that is not a positive integer, no query with a relevant document, a judged
            query without a ranking, or a ranking that lists a document twice.

    Example::

        relevance_metrics({"q1": ["d3", "d1"]}, {"q1": {"d1": 1}}, ks=(1, 2))
        # {'ndcg@1': 0.0, 'recall@1': 0.0, 'mrr@1': 0.0,
        #  'ndcg@2': 0.6309..., 'recall@2': 1.0, 'mrr@2': 0.5, 'queries': 1.0}
    """
    for k in ks:
        check_positive_int("k", k)
    judged = {query: grades for query, grades in qrels.items() if any(g > 0 for g in grades.values())}
    if not judged:
        raise ConfigError("qrels has no query with a relevant document (a grade > 0)")
    missing = sorted(set(judged) - set(rankings))
    if missing:
        raise ConfigError(
            f"{len(missing)} judged queries have no ranking, e.g. {missing[:3]}; rank every judged query"
        )
    totals = {f"{name}@{k}": 0.0 for k in ks for name in ("ndcg", "recall", "mrr")}
    for query, grades in judged.items():
        ranking = list(rankings[query])
        if len(set(ranking)) != len(ranking):
            raise ConfigError(f"the ranking of query {query!r} lists a document more than once")
        ideal = sorted((g for g in grades.values() if g > 0), reverse=True)
        gains = [max(grades.get(doc, 0), 0) for doc in ranking]
        for k in ks:
            dcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains[:k]))
            idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal[:k]))
            totals[f"ndcg@{k}"] += dcg / idcg
            totals[f"recall@{k}"] += sum(1 for gain in gains[:k] if gain > 0) / len(ideal)
            first = next((rank for rank, gain in enumerate(gains[:k]) if gain > 0), None)
            totals[f"mrr@{k}"] += 0.0 if first is None else 1.0 / (first + 1)
    result = {name: total / len(judged) for name, total in totals.items()}
    result["queries"] = float(len(judged))
    return result
