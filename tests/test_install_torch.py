"""tools/install_torch.py never installs a CUDA torch on a CPU Linux machine."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "install_torch.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_torch", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, list[list[str]]]:
    module = load_script()
    installs: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        installs.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    monkeypatch.setattr(module.sys, "platform", "linux")
    monkeypatch.setattr(module, "installed_torch", lambda: None)
    monkeypatch.delenv("MOL_TORCH_FIND_LINKS", raising=False)
    return module, installs


def test_refuses_the_cuda_build(
    script: tuple[ModuleType, list[list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, installs = script
    monkeypatch.setattr(
        module, "planned_torch", lambda spec, links: ("2.13.0", "https://example.invalid/torch.whl")
    )
    assert module.main([]) == 2
    assert installs == []


def test_installs_the_cpu_build_with_the_find_links_from_the_environment(
    script: tuple[ModuleType, list[list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, installs = script
    seen: list[str | None] = []
    monkeypatch.setenv("MOL_TORCH_FIND_LINKS", "wheelhouse")

    def planned(spec: str, links: str | None) -> tuple[str, str]:
        seen.append(links)
        return "2.13.0+cpu", "file:///wheelhouse/torch-2.13.0+cpu.whl"

    monkeypatch.setattr(module, "planned_torch", planned)
    assert module.main([]) == 0
    assert seen == ["wheelhouse"]
    assert installs == [
        [sys.executable, "-m", "pip", "install", "--quiet", "torch==2.13.0", "--find-links", "wheelhouse"]
    ]


def test_keeps_an_installed_cpu_build(
    script: tuple[ModuleType, list[list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, installs = script
    monkeypatch.setattr(module, "installed_torch", lambda: "2.13.0+cpu")
    assert module.main([]) == 0
    assert installs == []


def test_gpu_flag_installs_from_the_default_index(script: tuple[ModuleType, list[list[str]]]) -> None:
    module, installs = script
    assert module.main(["--gpu"]) == 0
    assert installs == [[sys.executable, "-m", "pip", "install", "--quiet", "torch==2.13.0"]]


def test_torchrec_goes_in_without_its_cuda_fbgemm_dependency(
    script: tuple[ModuleType, list[list[str]]],
) -> None:
    module, installs = script
    module.installed_torch = lambda: "2.13.0+cpu"
    assert module.main(["--torchrec"]) == 0
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    assert installs == [
        [*pip, "fbgemm-gpu-cpu==1.8.0", *module.TORCHREC_DEPENDENCIES],
        [*pip, "--no-deps", "torchrec==1.8.0"],
    ]
