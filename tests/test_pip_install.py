"""tools/pip_install.py never hands torchrec to pip's resolver (it would pull the CUDA fbgemm-gpu)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "pip_install.py"
PACKAGES = ROOT / "packages"


def load_script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("pip_install", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, list[list[str]]]:
    module = load_script(monkeypatch)
    installs: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        installs.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    return module, installs


def test_mol_train_goes_in_without_deps_after_its_other_requirements(
    script: tuple[ModuleType, list[list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, installs = script
    monkeypatch.setattr(module, "_installed", lambda name: "1.8.0" if name == "torchrec" else None)
    core, train, index = (str(PACKAGES / n) for n in ("mol-core", "mol-train", "mol-index"))
    assert module.main(["--editable", core, f"{train}[index]", index, "--with", "pytest>=8"]) == 0
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    first, second = installs
    assert first[: len(pip)] == pip
    assert second == [*pip, "--no-deps", "-e", f"{train}[index]"]
    resolved = first[len(pip) :]
    assert resolved[:4] == ["-e", core, "-e", index]
    assert "pytest>=8" in resolved
    assert "tqdm>=4.60" in resolved  # mol-train's own requirements are resolved in the first run
    names = {module._name(arg) for arg in resolved if not arg.startswith(("-", "/"))}
    assert "torchrec" not in names
    assert not names & {"mol-core", "mol-index", "fbgemm-gpu"}  # siblings come from their folders


def test_refuses_when_torchrec_is_not_installed(
    script: tuple[ModuleType, list[list[str]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    module, installs = script
    monkeypatch.setattr(module, "_installed", lambda name: None)
    assert module.main([str(PACKAGES / "mol-core"), str(PACKAGES / "mol-train")]) == 2
    assert installs == []
    assert "python tools/install_torch.py --torchrec" in capsys.readouterr().err


def test_packages_without_torchrec_are_one_plain_pip_run(script: tuple[ModuleType, list[list[str]]]) -> None:
    module, installs = script
    core, serve = str(PACKAGES / "mol-core"), str(PACKAGES / "mol-serve")
    assert module.main([core, serve]) == 0
    assert installs == [[sys.executable, "-m", "pip", "install", "--quiet", core, serve]]


def test_a_missing_sibling_is_named(
    script: tuple[ModuleType, list[list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, installs = script
    monkeypatch.setattr(module, "_installed", lambda name: "1.8.0" if name == "torchrec" else None)
    with pytest.raises(SystemExit, match="packages/mol-core"):
        module.main([str(PACKAGES / "mol-train")])
    assert installs == []


def test_an_unknown_extra_is_refused(script: tuple[ModuleType, list[list[str]]]) -> None:
    module, _ = script
    with pytest.raises(SystemExit, match="has no extra"):
        module.main([f"{PACKAGES / 'mol-train'}[cuda]"])
