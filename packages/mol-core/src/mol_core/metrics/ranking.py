"""Full-corpus ranking metrics for leave-one-out evaluation.

Each of B queries (users) has one held-out target item among N items. The target is ranked against
every other item of the corpus, not against a sample of negatives; items already in the query's history
(``seen``) are filtered out of the ranking, except the target itself, which is always ranked even when it
also occurs in the history (a repeated interaction stays a valid target).

Rank is 1-based and ties are counted pessimistically::

    rank = 1 + #{j != target, j not seen : score[j] >= score[target]}

so a model that gives every item the same score ranks each target last (rank N minus the number of
filtered items), never first. Scores are compared in float32 whatever their dtype (bf16 included).

From the ranks, :class:`RankingMetrics` accumulates HR@K = mean(rank <= K),
NDCG@K = mean(1 / log2(rank + 1) if rank <= K else 0) (one relevant item, so the ideal DCG is 1) and
MRR = mean(1 / rank) (untruncated), in float64 sums that a distributed caller can all-reduce.
"""

from __future__ import annotations

import itertools
import math

import torch

from mol_core._checks import check_positive_int, shape_str
from mol_core.errors import ConfigError, ShapeError

__all__ = ["RankingMetrics", "TargetRankAccumulator", "target_ranks"]


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, *, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """Rank of each query's target among all N items, with seen items filtered out.

    Ties count against the target (see the module docstring); the target is ranked even when it occurs
    in ``seen``. Memory is O(B * N); for a corpus too large to score at once, use
    :class:`TargetRankAccumulator` over item blocks, which gives the same ranks.

    Args:
        scores: ``(B, N)`` floating scores of every query against every item.
        targets: ``(B,)`` integer index in ``[0, N)`` of each query's target item.
        seen: the items to filter out of each query's ranking, either a ``(B, N)`` bool mask (True =
            seen) or a ``(B, L)`` integer tensor of item indices padded with negative values (ignored).

    Returns:
        ``(B,)`` int64 ranks in ``[1, N]``, on the device of ``scores``.

    Raises:
        ShapeError: a tensor has the wrong shape or dtype.
        ValueError: ``scores`` contain NaN, or a target or seen index is not in ``[0, N)``.

    Example:
        >>> scores = torch.tensor([[0.1, 0.9, 0.5, 0.5]])  # (B, N) = (1, 4)
        >>> target_ranks(scores, torch.tensor([2])).tolist()  # item 1 beats it, item 3 ties with it
        [3]
        >>> target_ranks(scores, torch.tensor([2]), seen=torch.tensor([[1, -1]])).tolist()
        [2]
    """
    if scores.dim() != 2:
        raise ShapeError(f"scores must have shape (B, N); got {shape_str(scores.shape)}")
    _check_floating("scores", scores)
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; rank only finite or infinite scores")
    batch, num_items = scores.shape
    _check_targets(targets, batch, num_items)
    target_scores = scores.gather(1, targets.long().unsqueeze(1)).squeeze(1)  # (B,)
    accumulator = TargetRankAccumulator(target_scores, targets, num_items=num_items, seen=seen)
    accumulator.add_block(scores, 0)
    return accumulator.ranks()


class TargetRankAccumulator:
    """Counts, block by block of items, how many items outrank each target.

    The caller scores the corpus in blocks of n items (in any order) and calls :meth:`add_block` for each;
    the full (B, N) score matrix is never needed. After every item is covered exactly once,
    :meth:`ranks` returns the same ranks as :func:`target_ranks` on the full matrix. The target's own
    column is skipped in every block, so ``target_scores`` may come from a separate call; compute it in
    the same precision as the blocks, or near-ties may be decided differently.

    Args:
        target_scores: ``(B,)`` floating score of each query's target item.
        targets: ``(B,)`` integer index in ``[0, N)`` of each target item.
        num_items: N, the corpus size.
        seen: ``None``, a ``(B, N)`` bool mask, or a ``(B, L)`` integer tensor of item indices padded with
            negative values; as in :func:`target_ranks`.

    Raises:
        ShapeError: a tensor has the wrong shape or dtype.
        ValueError: ``target_scores`` contain NaN, or a target or seen index is not in ``[0, N)``.

    Example:
        >>> acc = TargetRankAccumulator(torch.tensor([0.5]), torch.tensor([2]), num_items=4)
        >>> acc.add_block(torch.tensor([[0.1, 0.9]]), 0)  # items 0 and 1
        >>> acc.add_block(torch.tensor([[0.5, 0.5]]), 2)  # items 2 (the target, skipped) and 3
        >>> acc.ranks().tolist()
        [3]
    """

    def __init__(
        self,
        target_scores: torch.Tensor,
        targets: torch.Tensor,
        *,
        num_items: int,
        seen: torch.Tensor | None = None,
    ) -> None:
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 0:
            raise ConfigError(f"num_items must be a non-negative integer; got {num_items!r}")
        if target_scores.dim() != 1:
            raise ShapeError(f"target_scores must have shape (B,); got {shape_str(target_scores.shape)}")
        _check_floating("target_scores", target_scores)
        if torch.isnan(target_scores).any():
            raise ValueError("target_scores contain NaN; rank only finite or infinite scores")
        batch = target_scores.shape[0]
        _check_targets(targets, batch, num_items)
        self._seen_mask: torch.Tensor | None = None  # (B, N) bool
        self._seen_ids: torch.Tensor | None = None  # (B, L) int64, negative = padding
        if seen is not None:
            if seen.dtype == torch.bool:
                if tuple(seen.shape) != (batch, num_items):
                    raise ShapeError(
                        f"a bool seen mask must have shape (B, N) = ({batch}, {num_items}); "
                        f"got {shape_str(seen.shape)}"
                    )
                self._seen_mask = seen
            elif _is_integer(seen):
                if seen.dim() != 2 or seen.shape[0] != batch:
                    raise ShapeError(
                        f"seen item indices must have shape (B, L) = ({batch}, L); "
                        f"got {shape_str(seen.shape)}"
                    )
                if seen.numel() > 0 and int(seen.max()) >= num_items:
                    raise ValueError(
                        f"seen item indices must be < N = {num_items} (negative values are padding); "
                        f"got {int(seen.max())}"
                    )
                self._seen_ids = seen.long()
            else:
                raise ShapeError(
                    f"seen must be a bool mask or an integer index tensor; got dtype {seen.dtype}"
                )
        self._num_items = num_items
        self._target_scores = target_scores.float().unsqueeze(1)  # (B, 1)
        self._targets = targets.long()  # (B,)
        self._counts = torch.zeros(batch, dtype=torch.int64, device=target_scores.device)  # (B,)
        self._covered = torch.zeros(num_items, dtype=torch.bool)  # (N,) on the CPU

    @property
    def num_items(self) -> int:
        """N, the corpus size given at construction."""
        return self._num_items

    def add_block(self, block_scores: torch.Tensor, start: int) -> None:
        """Counts the items ``[start, start + n)`` that outrank or tie each target.

        Args:
            block_scores: ``(B, n)`` floating scores of every query against items ``start .. start+n-1``.
            start: index of the block's first item.

        Raises:
            ShapeError: ``block_scores`` is not ``(B, n)`` floating.
            ValueError: the block contains NaN, lies outside ``[0, N)``, or overlaps an added block.
        """
        batch = self._counts.shape[0]
        if block_scores.dim() != 2 or block_scores.shape[0] != batch:
            raise ShapeError(
                f"block_scores must have shape (B, n) = ({batch}, n); got {shape_str(block_scores.shape)}"
            )
        _check_floating("block_scores", block_scores)
        width = block_scores.shape[1]
        if isinstance(start, bool) or not isinstance(start, int):
            raise TypeError(f"start must be an int; got {type(start).__name__}")
        stop = start + width
        if start < 0 or stop > self._num_items:
            raise ValueError(f"block [{start}, {stop}) lies outside the N = {self._num_items} items")
        if self._covered[start:stop].any():
            raise ValueError(f"block [{start}, {stop}) overlaps a block added before")
        block = block_scores.float()  # (B, n)
        if torch.isnan(block).any():
            raise ValueError("block_scores contain NaN; rank only finite or infinite scores")
        # Column `width` is a dump for indices outside the block, dropped after the scatters.
        excluded = torch.zeros(batch, width + 1, dtype=torch.bool, device=block.device)  # (B, n + 1)
        if self._seen_mask is not None:
            excluded[:, :width] = self._seen_mask[:, start:stop]
        if self._seen_ids is not None:
            local = self._seen_ids - start  # (B, L)
            inside = (local >= 0) & (local < width) & (self._seen_ids >= 0)  # (B, L)
            excluded.scatter_(1, torch.where(inside, local, width), True)
        local_target = (self._targets - start).unsqueeze(1)  # (B, 1)
        target_inside = (local_target >= 0) & (local_target < width)  # (B, 1)
        excluded.scatter_(1, torch.where(target_inside, local_target, width), True)
        at_least = (block >= self._target_scores) & ~excluded[:, :width]  # (B, n)
        self._counts += at_least.sum(dim=1)
        self._covered[start:stop] = True

    def ranks(self) -> torch.Tensor:
        """The 1-based rank of each target, ties counted against it.

        Returns:
            ``(B,)`` int64 ranks, on the device of ``target_scores``.

        Raises:
            RuntimeError: the added blocks do not cover all N items.
        """
        missing = self._num_items - int(self._covered.sum())
        if missing:
            raise RuntimeError(
                f"the added blocks cover {self._num_items - missing} of N = {self._num_items} items; "
                "add the missing blocks before asking for ranks"
            )
        return self._counts + 1  # (B,)


class RankingMetrics:
    """Accumulates HR@K, NDCG@K and MRR over batches of ranks.

    The state is a float64 sum per metric plus a count of ranked queries. For distributed evaluation,
    all-reduce :meth:`state_tensor` and rebuild with :meth:`from_state_tensor` (or :meth:`merge` local
    accumulators). :meth:`compute` returns ``{"hr@K", "ndcg@K" for each K, "mrr", "count"}``.

    Args:
        ks: the cutoffs K, positive and strictly increasing.

    Raises:
        ConfigError: ``ks`` is empty, not positive integers, or not strictly increasing.

    Example:
        >>> metrics = RankingMetrics(ks=(1, 10))
        >>> metrics.update_ranks(torch.tensor([1, 3, 20]))
        >>> {key: round(value, 4) for key, value in metrics.compute().items()}
        {'hr@1': 0.3333, 'hr@10': 0.6667, 'ndcg@1': 0.3333, 'ndcg@10': 0.5, 'mrr': 0.4611, 'count': 3.0}
    """

    def __init__(self, ks: tuple[int, ...] = (1, 10, 50, 200)) -> None:
        ks = tuple(ks)
        if not ks:
            raise ConfigError("ks must name at least one cutoff K; got an empty sequence")
        for k in ks:
            check_positive_int("every K in ks", k)
        if any(a >= b for a, b in itertools.pairwise(ks)):
            raise ConfigError(f"ks must be strictly increasing (sorted, no duplicates); got {ks}")
        self._ks = ks
        self._sums = torch.zeros(2 * len(ks) + 1, dtype=torch.float64)  # hr@K..., ndcg@K..., rr
        self._count = 0

    @property
    def ks(self) -> tuple[int, ...]:
        """The cutoffs K."""
        return self._ks

    @property
    def count(self) -> int:
        """The number of ranked queries accumulated so far."""
        return self._count

    def update(
        self, scores: torch.Tensor, targets: torch.Tensor, *, seen: torch.Tensor | None = None
    ) -> None:
        """Ranks a batch with :func:`target_ranks` and accumulates the ranks; arguments as there."""
        self.update_ranks(target_ranks(scores, targets, seen=seen))

    def update_ranks(self, ranks: torch.Tensor) -> None:
        """Accumulates a batch of precomputed ranks.

        Args:
            ranks: ``(B,)`` integer 1-based ranks.

        Raises:
            ShapeError: ``ranks`` is not a 1-D integer tensor.
            ValueError: a rank is below 1.
        """
        if ranks.dim() != 1 or not _is_integer(ranks):
            raise ShapeError(
                f"ranks must be a (B,) integer tensor; got {shape_str(ranks.shape)} {ranks.dtype}"
            )
        if ranks.numel() == 0:
            return
        if int(ranks.min()) < 1:
            raise ValueError(f"ranks are 1-based; got {int(ranks.min())}")
        rank = ranks.to(torch.float64).unsqueeze(1)  # (B, 1)
        cutoffs = torch.tensor(self._ks, dtype=torch.float64, device=rank.device)  # (K,)
        hits = rank <= cutoffs  # (B, K)
        gains = torch.where(hits, 1.0 / torch.log2(rank + 1.0), 0.0)  # (B, K)
        batch_sums = torch.cat([hits.sum(dim=0, dtype=torch.float64), gains.sum(dim=0), (1.0 / rank).sum(0)])
        self._sums += batch_sums.cpu()
        self._count += ranks.shape[0]

    def compute(self) -> dict[str, float]:
        """The metrics averaged over every accumulated query.

        Returns:
            ``hr@K`` and ``ndcg@K`` for each K, ``mrr``, and ``count`` (as a float).

        Raises:
            RuntimeError: nothing has been accumulated.
        """
        if self._count == 0:
            raise RuntimeError("RankingMetrics.compute() needs at least one ranked query; call update first")
        means = (self._sums / self._count).tolist()
        num_ks = len(self._ks)
        result = {f"hr@{k}": means[i] for i, k in enumerate(self._ks)}
        result.update({f"ndcg@{k}": means[num_ks + i] for i, k in enumerate(self._ks)})
        result["mrr"] = means[-1]
        result["count"] = float(self._count)
        return result

    def reset(self) -> None:
        """Clears the accumulated state."""
        self._sums.zero_()
        self._count = 0

    def merge(self, other: RankingMetrics) -> None:
        """Adds the state of ``other`` (same ``ks``) into this accumulator.

        Raises:
            ConfigError: the two accumulators have different ``ks``.
        """
        if other.ks != self._ks:
            raise ConfigError(f"cannot merge RankingMetrics with ks={other.ks} into ks={self._ks}")
        self._sums += other._sums
        self._count += other._count

    def state_tensor(self) -> torch.Tensor:
        """The state as one CPU float64 tensor ``(2K + 2,)``: the sums, then the count; safe to all-reduce.

        Example:
            ``state = metrics.state_tensor().to(device); torch.distributed.all_reduce(state);
            total = RankingMetrics.from_state_tensor(state, ks=metrics.ks)``
        """
        count = torch.tensor([float(self._count)], dtype=torch.float64)
        return torch.cat([self._sums, count])  # (2K + 2,)

    @classmethod
    def from_state_tensor(cls, state: torch.Tensor, ks: tuple[int, ...]) -> RankingMetrics:
        """Rebuilds an accumulator from :meth:`state_tensor` (possibly summed over processes).

        Raises:
            ShapeError: ``state`` does not have shape ``(2K + 2,)``.
            ValueError: the count is not a non-negative integer.
        """
        metrics = cls(ks)
        expected = 2 * len(metrics.ks) + 2
        if tuple(state.shape) != (expected,):
            raise ShapeError(
                f"state must have shape (2K + 2,) = ({expected},) for ks={metrics.ks}; "
                f"got {shape_str(state.shape)}"
            )
        values = state.detach().to(device="cpu", dtype=torch.float64)  # (2K + 2,)
        count = float(values[-1])
        if not (count >= 0 and math.isfinite(count) and count == int(count)):
            raise ValueError(
                f"the last entry of state is the count and must be a non-negative integer; got {count}"
            )
        metrics._sums.copy_(values[:-1])
        metrics._count = int(count)
        return metrics


def _is_integer(tensor: torch.Tensor) -> bool:
    return tensor.dtype != torch.bool and not tensor.dtype.is_floating_point and not tensor.dtype.is_complex


def _check_floating(name: str, tensor: torch.Tensor) -> None:
    if not tensor.dtype.is_floating_point:
        raise ShapeError(f"{name} must have a floating dtype; got {tensor.dtype}")


def _check_targets(targets: torch.Tensor, batch: int, num_items: int) -> None:
    if tuple(targets.shape) != (batch,):
        raise ShapeError(f"targets must have shape (B,) = ({batch},); got {shape_str(targets.shape)}")
    if not _is_integer(targets):
        raise ShapeError(f"targets must hold integer item indices; got dtype {targets.dtype}")
    if batch == 0:
        return
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_items:
        bad = low if low < 0 else high
        raise ValueError(f"targets must be item indices in [0, N) = [0, {num_items}); got {bad}")
