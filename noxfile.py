"""Sessions that build, check and measure the mol workspace.

    nox -s test bench        # what CI runs (bench in its quick mode)
    nox -s bench -- --full   # the full benchmarks, for the record in docs/benchmarks.md
    nox -s lint typecheck    # ruff and mypy --strict on the packages
    nox -s protos            # regenerate mol-core's code from protos/ (-- --check only compares)
    nox -s quickstart        # the main job: data, train, export, index, serve, query (tools/quickstart.py)

Every session installs what it needs into its own virtual environment with pip; torch goes in first
through tools/install_torch.py, which refuses a CUDA build on a CPU machine, and the packages through
tools/pip_install.py, which keeps pip from pulling torchrec's CUDA fbgemm-gpu (docs/install.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = ["mol-core", "mol-train", "mol-index", "mol-serve"]
#: The grpcio-tools that generated mol-core's checked-in code (the oldest one mol supports); the pin
#: lives in tools/gen_protos.py, which refuses any other version.
_PIN = re.search(r'^GRPCIO_TOOLS_VERSION = "([^"]+)"', (ROOT / "tools" / "gen_protos.py").read_text(), re.M)
if _PIN is None:
    raise RuntimeError("tools/gen_protos.py no longer defines GRPCIO_TOOLS_VERSION")
GRPCIO_TOOLS = f"grpcio-tools=={_PIN.group(1)}"
#: The deployment files' linters (tests/test_deploy.py): Kubernetes schemas and the Compose spec, offline.
DEPLOY_LINTERS = ["kubernetes-validate==1.37.0", "check-jsonschema==0.39.0"]
#: mol-train's ``text`` and ``rerank`` extras (the text tests build a tiny random BERT and a tiny ONNX
#: cross-encoder with them; no weights needed).
TEXT = ["transformers>=4.44", "tokenizers>=0.19", "onnxruntime>=1.17", "onnx>=1.15"]
TEST_TOOLS = ["pytest>=8", "hypothesis>=6.100", "cryptography>=42", *DEPLOY_LINTERS, *TEXT]

nox.options.sessions = ["test", "bench"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True


def install_torch(session: nox.Session, *, torchrec: bool = True) -> None:
    """torch (CPU build on CPU machines) and, for mol-train, fbgemm and torchrec (see the script)."""
    session.run("python", str(ROOT / "tools" / "install_torch.py"), *(["--torchrec"] if torchrec else []))


def install_packages(
    session: nox.Session, *packages: str, editable: bool = True, also: tuple[str, ...] = ()
) -> None:
    """The local ``packages`` (names, optionally with extras) and the ``also`` requirements, one resolver run.

    Through tools/pip_install.py: mol-train goes in with ``--no-deps`` after its other requirements, since
    pip cannot override torchrec's CUDA fbgemm-gpu requirement (install_torch put in fbgemm-gpu-cpu).
    """
    args = [str(ROOT / "packages" / name) for name in packages]
    extra = [arg for requirement in also for arg in ("--with", requirement)]
    session.run(
        "python", str(ROOT / "tools" / "pip_install.py"), *(["--editable"] if editable else []), *args, *extra
    )


@nox.session
def test(session: nox.Session) -> None:
    """Every package's tests and the cross-package tests in tests/."""
    install_torch(session)
    # One resolver run for the packages and the pinned grpcio-tools, so that grpcio-health-checking and
    # grpcio-reflection are picked compatible with the protobuf that grpcio-tools accepts. triton (the
    # `triton` extra of mol-index): CI checks the fused kernel under TRITON_INTERPRET=1 on the CPU.
    install_packages(session, *PACKAGES, also=(*TEST_TOOLS, GRPCIO_TOOLS, "triton>=3.0"))
    paths = [str(ROOT / "packages" / name / "tests") for name in PACKAGES] + [str(ROOT / "tests")]
    session.run("python", "-m", "pytest", *paths, *session.posargs, env={"TRITON_INTERPRET": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: each writes bench-results/<name>.json and prints a table (quick unless -- --full)."""
    install_torch(session)
    install_packages(session, *PACKAGES, also=tuple(TEXT))  # the text benchmarks' tiny models
    session.run("python", str(ROOT / "tools" / "run_benchmarks.py"), *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the repository (generated code excluded)."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", str(ROOT))
    session.run("ruff", "format", "--check", str(ROOT))


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the public packages' sources."""
    install_torch(session)
    install_packages(session, *PACKAGES)
    session.install("mypy==2.4.1", "types-protobuf", "types-tqdm")
    sources = [str(ROOT / "packages" / name / "src") for name in PACKAGES]
    session.run("mypy", "--config-file", str(ROOT / "pyproject.toml"), *sources)


@nox.session
def protos(session: nox.Session) -> None:
    """Regenerates mol-core's Python code from protos/ with the pinned grpcio-tools (-- --check compares)."""
    session.install(GRPCIO_TOOLS)
    session.run("python", str(ROOT / "tools" / "gen_protos.py"), *session.posargs)


@nox.session
def quickstart(session: nox.Session) -> None:
    """The main job, end to end (tools/quickstart.py); arguments after -- go to it (e.g. -- --fresh)."""
    install_torch(session)
    install_packages(session, *PACKAGES, editable=False)
    session.run("python", str(ROOT / "tools" / "quickstart.py"), *session.posargs)
