"""What the hardware a process runs on can do, where mol chooses a code path by it."""

from __future__ import annotations

import torch

__all__ = ["bf16_is_native"]


def bf16_is_native(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices natively: CUDA, or a CPU for which torch's oneDNN reports
    bf16 support (``torch.ops.mkldnn._is_mkldnn_bf16_supported``: CPUs with AVX512-BF16 or AMX). Elsewhere
    torch emulates bf16, several times slower than float32."""
    if torch.device(device).type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # builds without oneDNN
        return False
