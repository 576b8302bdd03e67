"""Full-corpus ranking metrics: target ranks (whole matrix or block by block), HR@K, NDCG@K and MRR."""

from mol_core.metrics.ranking import RankingMetrics, TargetRankAccumulator, target_ranks

__all__ = ["RankingMetrics", "TargetRankAccumulator", "target_ranks"]
