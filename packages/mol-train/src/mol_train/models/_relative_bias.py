"""HSTU's relative attention bias: one learned scalar per relative position plus one per time bucket."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "TIME_BUCKET_DIVISOR",
    "RelativeAttentionBias",
    "query_time_buckets",
    "relative_offsets",
    "time_buckets",
]

# The reference buckets a time gap dt (in the timestamps' unit, seconds for MovieLens) as
# floor(ln(max(|dt|, 1)) / 0.301): logarithmic buckets, each about 1.35x wider than the one before.
TIME_BUCKET_DIVISOR = 0.301


def time_buckets(query_times: torch.Tensor, key_times: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Log-bucketed absolute time gaps between every query and key position.

    Args:
        query_times: ``(B, L)`` int64, the time each query position asks about.
        key_times: ``(B, L)`` int64, the time of each key position's item.
        num_buckets: the largest bucket id; longer gaps are clamped into it.

    Returns:
        ``(B, L, L)`` int64 in ``[0, num_buckets]``, indexed ``[b, query, key]``.
    """
    gaps = (query_times.unsqueeze(2) - key_times.unsqueeze(1)).abs().clamp(min=1)  # (B, L, L)
    buckets = torch.floor(torch.log(gaps.to(torch.float32)) / TIME_BUCKET_DIVISOR)  # (B, L, L)
    return buckets.clamp(0, num_buckets).to(torch.int64)  # (B, L, L)


class RelativeAttentionBias(nn.Module):
    """``rab[b, i, j] = w_pos[i - j] + w_time[bucket(tq[b, i] - t[b, j])]``, the time term only with times.

    Only ``j <= i`` is ever used (attention is causal), so the position table has one weight per offset
    ``0..max_len-1``; the reference keeps ``2 * max_len - 1`` weights, half of which causal masking never
    reads. The query time ``tq[b, i]`` is the timestamp of the *next* item ``t[b, i + 1]``, as in the
    reference (``ts(next item) - ts(current item)``); at the last position it is ``next_timestamps`` when
    given (the request time, or the target's time in evaluation) and the item's own time otherwise.

    Args:
        max_len: the longest sequence ``L``.
        num_time_buckets: the largest time bucket id (the table has ``num_time_buckets + 1`` rows).
    """

    def __init__(self, max_len: int, num_time_buckets: int) -> None:
        super().__init__()
        self.num_time_buckets = num_time_buckets
        self.position_weights = nn.Parameter(torch.empty(max_len).normal_(0.0, 0.02))  # (max_len,)
        self.time_weights = nn.Parameter(torch.empty(num_time_buckets + 1).normal_(0.0, 0.02))

    def forward(self, offsets: torch.Tensor, buckets: torch.Tensor | None) -> torch.Tensor:
        """Looks the bias up.

        Args:
            offsets: ``(L, L)`` int64 from :func:`relative_offsets`.
            buckets: ``(B, L, L)`` int64 from :func:`query_time_buckets`, or None for no time bias.

        Returns:
            ``(1, L, L)`` without buckets, ``(B, L, L)`` with them; indexed ``[b, query, key]``.
        """
        bias = self.position_weights[offsets].unsqueeze(0)  # (1, L, L)
        if buckets is None:
            return bias
        return bias + self.time_weights[buckets]  # (B, L, L)


def relative_offsets(length: int, device: torch.device) -> torch.Tensor:
    """``offsets[i, j] = max(i - j, 0)``: the relative position of key ``j`` seen from query ``i``.

    Returns:
        ``(L, L)`` int64; the clamp only touches ``j > i``, which causal masking discards anyway.
    """
    positions = torch.arange(length, device=device)  # (L,)
    return (positions.unsqueeze(1) - positions.unsqueeze(0)).clamp(min=0)  # (L, L)


def query_time_buckets(
    timestamps: torch.Tensor, next_timestamps: torch.Tensor | None, num_buckets: int
) -> torch.Tensor:
    """Time buckets between each query position's time and each key's time.

    The query time of position ``i`` is ``timestamps[:, i + 1]``; at ``i = L - 1`` it is
    ``next_timestamps`` when given, else the last item's own time.

    Args:
        timestamps: ``(B, L)`` int64.
        next_timestamps: ``(B,)`` int64 or None.
        num_buckets: the largest bucket id.

    Returns:
        ``(B, L, L)`` int64 in ``[0, num_buckets]``.
    """
    length = timestamps.shape[1]
    last = timestamps[:, -1:] if next_timestamps is None else next_timestamps.unsqueeze(1)  # (B, 1)
    # t[i + 1], and `last` at i = L - 1; roll + where keep every shape (B, L) so L can stay symbolic.
    is_last = (torch.arange(length, device=timestamps.device) == length - 1).unsqueeze(0)  # (1, L)
    query_times = torch.where(is_last, last, timestamps.roll(-1, dims=1))  # (B, L)
    return time_buckets(query_times, timestamps, num_buckets)  # (B, L, L)
