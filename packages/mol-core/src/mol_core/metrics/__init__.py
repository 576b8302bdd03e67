"""Evaluation metrics: full-corpus ranking of a held-out target (HR@K, NDCG@K, MRR) and retrieval against
graded relevance judgments (nDCG@k, Recall@k, MRR@k as BEIR reports them)."""

from mol_core.metrics.ranking import RankingMetrics, TargetRankAccumulator, target_ranks
from mol_core.metrics.relevance import relevance_metrics

__all__ = ["RankingMetrics", "TargetRankAccumulator", "relevance_metrics", "target_ranks"]
