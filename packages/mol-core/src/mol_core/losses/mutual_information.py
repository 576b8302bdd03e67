"""Mutual-information load balancing for mixture gating weights.

    L_MI = -H(mean_m pi_m) + mean_m H(pi_m),     H(p) = -sum_k p_k log p_k

The first term rewards using every component across pairs (high entropy of the average weights); the
second rewards each pair committing to few components. Minimising ``L_MI`` maximises the mutual information
between pairs and components. The paper applies it with weight 0.001 to (query, positive item) pairs.
"""

from __future__ import annotations

import torch

from mol_core._checks import shape_str
from mol_core.errors import ShapeError

__all__ = ["mutual_information_loss"]

_LOG_EPS = 1e-9


def mutual_information_loss(weights: torch.Tensor) -> torch.Tensor:
    """The negative mutual information between pairs and mixture components.

    Args:
        weights: ``(M, P)`` gating weights, one row per pair, each row on the simplex (rows of any leading
            shape ``(*, P)`` are flattened to ``M`` pairs).

    Returns:
        A float32 scalar in ``[-log P, 0]``: ``-log P`` for perfectly balanced one-hot routing, ``0`` when
        every pair uses the same weights.

    Raises:
        ShapeError: ``weights`` with fewer than two dimensions or no elements.

    Example::

        mutual_information_loss(torch.eye(4))  # -log 4: each pair uses its own component
        mutual_information_loss(torch.full((4, 4), 0.25))  # 0: every pair mixes alike
    """
    if weights.dim() < 2 or weights.numel() == 0:
        raise ShapeError(f"weights must have shape (M, P) with M, P >= 1; got {shape_str(weights.shape)}")
    probs = weights.float().reshape(-1, weights.shape[-1])  # (M, P)
    mean_probs = probs.mean(dim=0)  # (P,)
    marginal_entropy = -(mean_probs * (mean_probs + _LOG_EPS).log()).sum()
    pair_entropy = -(probs * (probs + _LOG_EPS).log()).sum(dim=-1).mean()
    return pair_entropy - marginal_entropy
