"""Sampled softmax with uniformly drawn negatives and accidental-hit masking.

For ``M`` (query, positive item) pairs and ``R`` negatives per pair,

    loss = mean_m [ -s(q_m, x_m) + log( exp s(q_m, x_m) + sum_r [x_mr != x_m] exp s(q_m, x_mr) ) ]

A negative that happens to be the positive item ("accidental hit") is left out of the denominator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mol_core._checks import check_positive_int, check_rank, shape_str
from mol_core.errors import ConfigError, ShapeError

__all__ = ["sample_uniform_negatives", "sampled_softmax_loss"]


def sample_uniform_negatives(
    num_rows: int,
    num_negatives: int,
    num_items: int,
    *,
    low: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draws item ids uniformly (with replacement) from ``[low, low + num_items)``.

    Args:
        num_rows: ``M``, one row of negatives per positive.
        num_negatives: ``R``, negatives per row (128 on MovieLens, 512 on Amazon Books in the paper).
        num_items: size of the id range.
        low: first id of the range (for example 1 when id 0 is padding).
        generator: a seeded generator for determinism.
        device: where to put the ids.

    Returns:
        ``(M, R)`` int64 item ids.

    Raises:
        ConfigError: ``num_negatives`` or ``num_items`` below 1, or ``num_rows`` below 0.

    Example::

        negatives = sample_uniform_negatives(6400, 128, num_items=3706, low=1, generator=generator)
    """
    check_positive_int("num_negatives", num_negatives)
    check_positive_int("num_items", num_items)
    if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 0:
        raise ConfigError(f"num_rows must be an integer >= 0; got {num_rows!r}")
    gen_device = generator.device if generator is not None else device
    ids = torch.randint(
        low, low + num_items, (num_rows, num_negatives), generator=generator, device=gen_device
    )  # (M, R)
    return ids if device is None else ids.to(device)


def sampled_softmax_loss(
    positive_scores: torch.Tensor,
    negative_scores: torch.Tensor,
    *,
    positive_ids: torch.Tensor,
    negative_ids: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sampled softmax cross-entropy with the positive at index 0 and accidental hits masked.

    Args:
        positive_scores: ``(M,)`` scores of the positive items.
        negative_scores: ``(M, R)`` scores of the sampled negatives.
        positive_ids: ``(M,)`` ids of the positive items.
        negative_ids: ``(M, R)`` ids of the negatives, or ``(R,)`` when all rows share them.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-row ``(M,)`` losses).

    Returns:
        The loss, computed in float32: a scalar, or ``(M,)`` with ``reduction="none"``.

    Raises:
        ShapeError: shapes that do not fit together.
        ConfigError: an unknown ``reduction``.

    Example::

        loss = sampled_softmax_loss(
            pos_scores, neg_scores, positive_ids=targets, negative_ids=negatives
        )  # (M,), (M, R), (M,), (M, R)
    """
    check_rank("positive_scores", positive_scores, ("M",))
    rows = positive_scores.shape[0]
    check_rank("negative_scores", negative_scores, (rows, "R"))
    check_rank("positive_ids", positive_ids, (rows,))
    num_negatives = negative_scores.shape[1]
    if negative_ids.shape not in ((rows, num_negatives), (num_negatives,)):
        raise ShapeError(
            f"negative_ids must have shape (M, R) = {shape_str((rows, num_negatives))} or (R,) = "
            f"({num_negatives},); got {shape_str(negative_ids.shape)}"
        )
    hits = negative_ids.unsqueeze(0) if negative_ids.dim() == 1 else negative_ids  # (M or 1, R)
    hits = hits == positive_ids.unsqueeze(1)  # (M, R)
    negatives = negative_scores.float().masked_fill(hits, float("-inf"))  # (M, R)
    logits = torch.cat([positive_scores.float().unsqueeze(1), negatives], dim=1)  # (M, 1 + R)
    target = torch.zeros(rows, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction=_check_reduction(reduction))


def _check_reduction(reduction: str) -> str:
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    return reduction
