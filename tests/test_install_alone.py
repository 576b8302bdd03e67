"""Each package installs alone in a fresh virtual environment and imports; the client needs no torch.

Every environment is new (``python -m venv``) and gets only what one team would install: torch through
tools/install_torch.py (the CPU build on a CPU machine; torchrec for mol-train), then the package from its
local path with its mol dependencies (they are not on a package index) through tools/pip_install.py, which
keeps pip from pulling torchrec's CUDA fbgemm-gpu. pip reads the CPU wheel's location from its own
configuration or MOL_TORCH_FIND_LINKS, as docs/install.md says. A few minutes in all (pip's
cache makes repeated runs faster); marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: package -> (local packages installed with it, its module, mol modules that must not be installed)
CASES = {
    "mol-core": (["mol-core"], "mol_core", ["mol_index", "mol_serve", "mol_train"]),
    "mol-index": (["mol-core", "mol-index"], "mol_index", ["mol_serve", "mol_train"]),
    "mol-serve": (["mol-core", "mol-index", "mol-serve"], "mol_serve", ["mol_train", "torchrec"]),
    "mol-train": (["mol-core", "mol-train"], "mol_train", ["mol_index", "mol_serve"]),
}
PROBE = """
import importlib, importlib.util, json, sys
module = importlib.import_module(sys.argv[1])
print(json.dumps({
    "version": module.__version__,
    "file": module.__file__,
    "present": [m for m in sys.argv[2:] if importlib.util.find_spec(m) is not None],
}))
"""


def run(*args: str | Path, timeout: float = 900) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def fresh_venv(path: Path) -> Path:
    run(sys.executable, "-m", "venv", path)
    return path / "bin" / "python"


@pytest.mark.slow
@pytest.mark.parametrize("package", list(CASES))
def test_package_installs_alone_and_imports(package: str, tmp_path: Path) -> None:
    local, module, absent = CASES[package]
    python = fresh_venv(tmp_path / "venv")
    torchrec = ["--torchrec"] if package == "mol-train" else []
    run(python, ROOT / "tools" / "install_torch.py", *torchrec)
    run(python, ROOT / "tools" / "pip_install.py", *(ROOT / "packages" / name for name in local))
    found = json.loads(run(python, "-c", PROBE, module, *absent).strip().splitlines()[-1])
    assert found["version"] == "0.1.0"
    assert str(tmp_path / "venv") in found["file"]  # the fresh environment's copy, not the repository's
    assert found["present"] == []
    if package != "mol-core":
        cli = package
        assert "usage" in run(tmp_path / "venv" / "bin" / cli, "--help").lower()
    # every declared dependency is satisfied, except torchrec's fbgemm-gpu (the CUDA build), which is
    # replaced by fbgemm-gpu-cpu on purpose (docs/install.md)
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, check=False)
    problems = [line for line in check.stdout.splitlines() if "requires fbgemm-gpu," not in line]
    assert problems in ([], ["No broken requirements found."]), check.stdout


@pytest.mark.slow
def test_client_runs_without_torch_installed(tmp_path: Path) -> None:
    """A client-only install: mol-core and mol-serve without dependencies, plus what the client needs."""
    python = fresh_venv(tmp_path / "venv")
    run(python, "-m", "pip", "install", "--quiet", "numpy", "protobuf>=6.31.0,<8", "grpcio>=1.73.1")
    run(python, "-m", "pip", "install", "--quiet", "grpcio-health-checking>=1.73.1")
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", ROOT / "packages" / "mol-core")
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", ROOT / "packages" / "mol-serve")
    probe = """
import importlib.util, sys
from mol_serve.client import RetrievalClient, build_request
request = build_request(histories=[[1, 2, 3]], top_k=5, exclude_history=True)
assert importlib.util.find_spec("torch") is None, "torch is installed"
assert not [m for m in sys.modules if m.startswith("torch")]
print(request.top_k, len(request.queries), RetrievalClient.__name__)
"""
    assert run(python, "-c", probe).split() == ["5", "1", "RetrievalClient"]
