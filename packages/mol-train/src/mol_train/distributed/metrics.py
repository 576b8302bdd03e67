"""Summing ranking metrics over processes: every rank evaluates its share of the users."""

from __future__ import annotations

import torch
import torch.distributed as dist

from mol_core.metrics import RankingMetrics

__all__ = ["all_reduce_metrics"]


def all_reduce_metrics(
    metrics: RankingMetrics, *, process_group: dist.ProcessGroup | None = None
) -> RankingMetrics:
    """The metrics of every rank's queries together (a collective: every rank must call it).

    All-reduces (sums) :meth:`RankingMetrics.state_tensor` and rebuilds an accumulator, so the result is
    exactly the metrics of the union of the ranks' queries. With ``nccl`` the state travels through the
    current CUDA device. Without a process group it returns a copy of ``metrics``.

    Args:
        metrics: this rank's accumulator (left unchanged).
        process_group: defaults to the world group.

    Returns:
        A new :class:`RankingMetrics` holding the sums over all ranks; every rank gets the same one.

    Example:
        ``total = all_reduce_metrics(local).compute()  # {"hr@10": ..., "count": <all users>}``
    """
    state = metrics.state_tensor()  # (2K + 2,) float64
    if not dist.is_initialized():
        return RankingMetrics.from_state_tensor(state, ks=metrics.ks)
    if dist.get_backend(process_group) == "nccl":
        state = state.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(state, op=dist.ReduceOp.SUM, group=process_group)
    return RankingMetrics.from_state_tensor(state, ks=metrics.ks)
