"""In-batch negatives with logQ correction.

Each query's positive is scored against the positives of the other queries in the batch. Popular items
appear as in-batch negatives more often than under uniform sampling, so (Yi et al., RecSys 2019) each
column's score is corrected by the log of its sampling probability before the softmax:

    loss = mean_m CE( s(q_m, x_j) - log Q(x_j) for all j, target m )

Columns holding the same item as the row's positive (other than the diagonal) are masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mol_core._checks import check_rank, shape_str
from mol_core.errors import ShapeError
from mol_core.losses.sampled_softmax import _check_reduction

__all__ = ["in_batch_softmax_loss"]


def in_batch_softmax_loss(
    scores: torch.Tensor,
    item_ids: torch.Tensor,
    *,
    log_q: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax over the batch's positives, with logQ correction and duplicate masking.

    Args:
        scores: ``(M, M)``; ``scores[i, j]`` is query ``i`` scored against the positive item of row ``j``.
        item_ids: ``(M,)`` ids of each row's positive item.
        log_q: ``(M,)`` log sampling probability of each row's positive item (for example the log of its
            frequency in the training stream); ``None`` disables the correction.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The loss, computed in float32: a scalar, or ``(M,)`` with ``reduction="none"``.

    Raises:
        ShapeError: ``scores`` not square, or ``item_ids`` / ``log_q`` not ``(M,)``.
        ConfigError: an unknown ``reduction``.

    Example::

        scores = query_side_scores_against_batch_positives  # (M, M)
        loss = in_batch_softmax_loss(scores, positive_ids, log_q=log_frequency[positive_ids])
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ShapeError(f"scores must be a square (M, M) matrix; got {shape_str(scores.shape)}")
    rows = scores.shape[0]
    check_rank("item_ids", item_ids, (rows,))
    logits = scores.float()  # (M, M)
    if log_q is not None:
        check_rank("log_q", log_q, (rows,))
        logits = logits - log_q.float().unsqueeze(0)  # (M, M)
    duplicates = item_ids.unsqueeze(1) == item_ids.unsqueeze(0)  # (M, M)
    duplicates.fill_diagonal_(False)
    logits = logits.masked_fill(duplicates, float("-inf"))
    target = torch.arange(rows, device=logits.device)
    return F.cross_entropy(logits, target, reduction=_check_reduction(reduction))
