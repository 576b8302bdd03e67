"""Uniformly sampled negatives for the sampled softmax: drawing them and scoring them without Python loops.

Three ways to share ``R`` negatives (:class:`~mol_train.config.NegativeSampling`):

- ``per_position``: ``(M, R)`` fresh ids for every (query, positive) pair, as the reference recipe does.
  The item side runs once over the ``U`` distinct ids of the batch (``torch.unique``), so no item is
  projected twice, and each position's rows are gathered from it
  (:meth:`~mol_core.similarity.Similarity.score_gathered`; MoL's fused kernel gathers block by block).
- ``per_sequence``: ``(B, R)`` ids per sequence, shared by its positions: each sequence is a group of
  :meth:`~mol_core.similarity.Similarity.score_groups` (one batched matmul, or MoL's fused kernel).
- ``shared``: ``(R,)`` ids for the whole batch: one group.

Shape symbols: B sequences, L positions, M valid positions, R negatives, U distinct sampled ids,
Pq/Px components, P = Pq * Px, d component width.
"""

from __future__ import annotations

import torch

from mol_core.errors import ShapeError
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_train.config import NegativeSampling

__all__ = ["lookup_ids", "negative_ids_per_position", "sample_negatives", "score_negatives"]


def sample_negatives(
    sampling: NegativeSampling,
    *,
    mask: torch.Tensor,
    num_negatives: int,
    num_items: int,
    generator: torch.Generator | None = None,
    rank: int = 0,
    world_size: int = 1,
    counts_of_ranks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draws item ids uniformly from ``[1, N]`` with replacement.

    With several processes the batch is this rank's share of a global batch of ``B * world_size`` rows,
    global row ``j`` on rank ``j mod world_size`` (:func:`mol_train.data.iter_train_batches`). Every rank
    holds the same generator state and draws the ids of the whole global batch, then keeps its own:
    ``per_sequence`` rows ``rank::world_size``; ``per_position`` the positions of those rows, located with
    every rank's per-row position counts (``counts_of_ranks``, gathered by the caller); ``shared`` ids are
    the same everywhere. So each rank gets exactly the negatives one process would draw for its rows.

    Args:
        sampling: who shares the negatives.
        mask: ``(B, L)`` bool, the supervised positions (``targets != 0``).
        num_negatives: R.
        num_items: N.
        generator: a seeded generator (on the CPU).
        rank: this process's rank.
        world_size: the number of processes.
        counts_of_ranks: ``(world_size, B)`` supervised positions of every rank's rows (``per_position``
            with several processes; ``mask.sum(1)`` of each rank, all-gathered).

    Returns:
        ``(M, R)``, ``(B, R)`` or ``(R,)`` int64 ids on the CPU.

    Raises:
        ShapeError: ``per_position`` with several processes and no ``(world_size, B)`` counts.
    """
    if sampling is NegativeSampling.PER_POSITION:
        if world_size == 1:
            return torch.randint(1, num_items + 1, (int(mask.sum()), num_negatives), generator=generator)
        rows = int(mask.shape[0])
        if counts_of_ranks is None or tuple(counts_of_ranks.shape) != (world_size, rows):
            raise ShapeError(
                f"per_position negatives over {world_size} processes need counts_of_ranks of shape "
                f"({world_size}, {rows})"
            )
        counts = counts_of_ranks.to(torch.int64).T.reshape(-1)  # (B * W,) in global row order
        drawn = torch.randint(1, num_items + 1, (int(counts.sum()), num_negatives), generator=generator)
        starts = torch.cumsum(counts, 0) - counts
        mine = torch.arange(rank, rows * world_size, world_size)  # this rank's global rows
        pieces = [drawn[int(starts[j]) : int(starts[j]) + int(counts[j])] for j in mine.tolist()]
        return torch.cat(pieces) if pieces else drawn[:0]
    if sampling is NegativeSampling.PER_SEQUENCE:
        rows = int(mask.shape[0]) * world_size
        drawn = torch.randint(1, num_items + 1, (rows, num_negatives), generator=generator)
        return drawn[rank::world_size] if world_size > 1 else drawn
    return torch.randint(1, num_items + 1, (num_negatives,), generator=generator)


def lookup_ids(
    sampling: NegativeSampling, negatives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ids to look up in the item table, and where each negative sits among them.

    Returns:
        ``(ids, inverse)``: for ``per_position`` the ``(1, U)`` distinct ids and the ``(M, R)`` index of
        each negative among them; otherwise ``(B, R)`` or ``(1, R)`` ids and ``None``.
    """
    if sampling is NegativeSampling.PER_POSITION:
        unique, inverse = torch.unique(negatives, return_inverse=True)  # (U,), (M, R)
        return unique.unsqueeze(0), inverse
    if sampling is NegativeSampling.PER_SEQUENCE:
        return negatives, None
    return negatives.unsqueeze(0), None


def negative_ids_per_position(
    sampling: NegativeSampling, negatives: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The ids of each position's negatives, for accidental-hit masking: ``(M, R)``, or ``(R,)`` if shared."""
    if sampling is NegativeSampling.PER_SEQUENCE:
        return negatives[_sequence_of_positions(mask)]  # (M, R)
    return negatives


def score_negatives(
    similarity: Similarity,
    query: QuerySide,
    negatives: ItemSide,
    sampling: NegativeSampling,
    *,
    mask: torch.Tensor,
    inverse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores every supervised position against its negatives.

    Args:
        similarity: the similarity head.
        query: ``M`` positions, sequence after sequence (``hidden[mask]`` order).
        negatives: the item side of the looked-up ids: ``(1, U, Px, d)`` per position, ``(B, R, Px, d)``
            per sequence, ``(1, R, Px, d)`` shared.
        sampling: who shares the negatives.
        mask: ``(B, L)`` bool, the supervised positions.
        inverse: ``(M, R)`` index into the ``U`` distinct ids (``per_position`` only).

    Returns:
        ``(M, R)`` float32 scores.
    """
    if sampling is NegativeSampling.PER_POSITION:
        if inverse is None:
            raise ValueError("per-position negatives need the (M, R) inverse index from lookup_ids")
        gating = negatives.gating
        table = ItemSide(negatives.embeddings[0], None if gating is None else gating[0])  # (U, Px, d)
        return similarity.score_gathered(query, table, inverse)
    if sampling is NegativeSampling.SHARED:
        return similarity.score_groups(query, negatives, [query.batch_size])  # one group: (1, R, Px, d)
    return similarity.score_groups(query, negatives, mask.sum(dim=1).tolist())  # a group per sequence


def _sequence_of_positions(mask: torch.Tensor) -> torch.Tensor:
    """``(M,)`` the sequence (row of ``mask``) of each supervised position, in ``mask``'s order."""
    return torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]
