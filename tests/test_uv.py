"""The uv workspace: `uv sync` plans the CPU torch, fbgemm-gpu-cpu and torchrec, and no CUDA wheel.

The resolution test copies the pyproject files into a fresh folder (a clone's view of them, with no
uv.lock), runs ``uv lock`` and ``uv sync --dry-run`` against a new project environment, and reads the
install plan. uv comes from PATH or is installed into a scratch virtual environment with pip; the folder
holding the CPU torch wheel comes from ``UV_FIND_LINKS`` (or pip's ``PIP_FIND_LINKS``, or pip's configured
``find-links``), as docs/install.md says. None of them: the test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["mol-core", "mol-index", "mol-serve", "mol-train"]
PLANNED = re.compile(r"^\s*\+\s*([A-Za-z0-9._-]+)(?:==(\S+)| @ )", re.M)


def script_constant(path: Path, name: str) -> str:
    match = re.search(rf'^{name} = "([^"]+)"', path.read_text(), re.M)
    assert match, f"{path} no longer defines {name}"
    return match.group(1)


def root_project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_workspace_pins_the_tested_stack() -> None:
    """The root and mol-train pin what tools/install_torch.py installs, and the pinned grpcio-tools."""
    install_torch = ROOT / "tools" / "install_torch.py"
    torch = script_constant(install_torch, "TORCH_VERSION")
    fbgemm = script_constant(install_torch, "FBGEMM_VERSION")
    torchrec = script_constant(install_torch, "TORCHREC_VERSION")
    grpcio_tools = script_constant(ROOT / "tools" / "gen_protos.py", "GRPCIO_TOOLS_VERSION")
    root = root_project()
    dependencies = root["project"]["dependencies"]  # type: ignore[index]
    assert f"torch=={torch}+cpu; sys_platform == 'linux'" in dependencies
    assert f"grpcio-tools=={grpcio_tools}" in root["dependency-groups"]["dev"]  # type: ignore[index]
    assert root["tool"]["uv"]["override-dependencies"] == ["fbgemm-gpu; sys_platform == 'never'"]  # type: ignore[index]
    train = tomllib.loads((ROOT / "packages" / "mol-train" / "pyproject.toml").read_text())["project"]
    assert f"torchrec=={torchrec}" in train["dependencies"]
    assert train["optional-dependencies"]["cpu"] == [f"fbgemm-gpu-cpu=={fbgemm}"]
    assert train["optional-dependencies"]["gpu"] == [f"fbgemm-gpu=={fbgemm}"]


def find_links() -> str:
    """The wheel folder: ``UV_FIND_LINKS``, ``PIP_FIND_LINKS``, or the ``find-links`` of pip's own config."""
    for variable in ("UV_FIND_LINKS", "PIP_FIND_LINKS"):
        if os.environ.get(variable):
            return os.environ[variable]
    configured = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    )
    for line in configured.stdout.splitlines():  # e.g. global.find-links='<folder>'
        key, _, value = line.partition("=")
        if key.endswith(".find-links") and value.strip("'\""):
            return value.strip("'\"").split()[0]
    pytest.skip("no folder with the CPU torch wheel is given (set UV_FIND_LINKS; docs/install.md)")


def obtain_uv(scratch: Path) -> str:
    found = shutil.which("uv")
    if found:
        return found
    venv = scratch / "uv-venv"
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
    )
    if made.returncode == 0:
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "uv"]
        installed = subprocess.run(pip, capture_output=True, text=True, timeout=300, check=False)
        if installed.returncode == 0 and (venv / "bin" / "uv").is_file():
            return str(venv / "bin" / "uv")
        made = installed
    pytest.skip(f"uv is not on PATH and `pip install uv` failed: {made.stderr.strip()[-500:]}")


def fresh_copy(destination: Path) -> Path:
    """The files uv reads to lock the workspace, as a fresh clone has them (no uv.lock, no .venv)."""
    for relative in ["pyproject.toml"] + [
        f"packages/{p}/{f}" for p in PACKAGES for f in ("pyproject.toml", "README.md")
    ]:
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / relative, destination / relative)
    return destination


@pytest.mark.slow
@pytest.mark.integration
def test_uv_sync_plans_the_cpu_stack_and_no_cuda_wheel(tmp_path: Path) -> None:
    links = find_links()
    uv = obtain_uv(tmp_path)
    project = fresh_copy(tmp_path / "clone")
    environment = tmp_path / "venv"
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("UV_", "VIRTUAL_ENV", "PIP_"))
    }
    env.update(
        UV_FIND_LINKS=links,
        UV_PROJECT_ENVIRONMENT=str(environment),  # a fresh virtual environment, not the repository's .venv
        UV_PYTHON=sys.executable,
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_CONFIG="1",  # no uv.toml of this machine's user
    )
    for command in (["lock"], ["sync", "--dry-run"]):
        done = subprocess.run(
            [uv, *command], cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, f"uv {' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    output = done.stdout + done.stderr
    assert "Would create project environment" in output, output[-3000:]
    planned = {name.lower(): version for name, version in PLANNED.findall(output)}
    assert planned.get("torch") == "2.13.0+cpu", planned
    assert planned.get("fbgemm-gpu-cpu") == "1.8.0", planned
    assert planned.get("torchrec") == "1.8.0", planned
    assert {"mol-core", "mol-index", "mol-serve", "mol-train", "pytest", "triton"} <= planned.keys(), planned
    cuda = sorted(name for name in planned if name.startswith(("nvidia-", "cuda-")) or name == "fbgemm-gpu")
    assert cuda == [], f"uv sync would install CUDA wheels: {cuda}"
    assert not environment.exists()  # a dry run
