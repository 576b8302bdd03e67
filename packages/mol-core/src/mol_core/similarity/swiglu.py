"""SwiGLU: the gated hidden layer of MoL's query projection in the reference recipe."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mol_core._checks import check_positive_int

__all__ = ["SwiGLU"]


class SwiGLU(nn.Module):
    """``x -> silu(x A + a) * (x B + b)``: ``(*, in) -> (*, hidden)``, one ``(in, 2 hidden)`` matmul.

    Args:
        input_dim: features in.
        hidden_dim: features out.

    Example:
        >>> SwiGLU(50, 512)(torch.randn(3, 50)).shape
        torch.Size([3, 512])
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.linear = nn.Linear(check_positive_int("input_dim", input_dim), 2 * hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(*, in) -> (*, hidden)``."""
        gate, value = self.linear(x).chunk(2, dim=-1)  # (*, hidden) each
        out: torch.Tensor = F.silu(gate) * value
        return out

    @torch.no_grad()
    def reset_xavier(self) -> None:
        """Xavier-normal weight; the bias drawn as Xavier-normal of a ``(1, 2 hidden)`` matrix (the
        reference stores its bias that way, so its initialisation treats it as a weight)."""
        nn.init.xavier_normal_(self.linear.weight)
        self.linear.bias.normal_(0.0, math.sqrt(2.0 / (1 + 2 * self.hidden_dim)))
