"""mol_core.hardware: what the device can do."""

from __future__ import annotations

import pytest
import torch

from mol_core.hardware import bf16_is_native


def test_cuda_counts_as_native_bf16_without_asking_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> bool:
        raise AssertionError("oneDNN was asked about a CUDA device")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", fail, raising=False)
    assert bf16_is_native("cuda") is True
    assert bf16_is_native(torch.device("cuda", 0)) is True


@pytest.mark.parametrize("reported", [True, False])
def test_a_cpu_is_native_exactly_when_onednn_says_so(monkeypatch: pytest.MonkeyPatch, reported: bool) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: reported, raising=False)
    assert bf16_is_native("cpu") is reported
    assert bf16_is_native() is reported


def test_a_torch_build_without_onednn_is_not_native(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> bool:
        raise RuntimeError("no oneDNN in this build")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", missing, raising=False)
    assert bf16_is_native("cpu") is False
