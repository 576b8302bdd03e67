"""Shared fixtures: test artifacts (bundle + index versions) and real servers in subprocesses.

Servers listen on 127.0.0.1 with port 0 and report their ports through a ``--port-file``; every wait is
bounded in time, and every server is stopped with SIGTERM (then killed if it does not exit).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from artifacts import build_all

TOKEN = "serving-token-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"


@dataclass
class ServerProcess:
    """A mol-serve server running in a subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int | None
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait (bounded), SIGKILL as a last resort; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(timeout=10)
        return int(self.process.returncode)


def start_server(tmp: Path, *args: str, name: str = "server", timeout: float = 90.0) -> ServerProcess:
    """Starts ``python -m mol_serve serve --host 127.0.0.1 --port 0 ARGS`` and waits until it serves."""
    port_file = tmp / f"{name}.port.json"
    log = tmp / f"{name}.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mol_serve",
                "--log-level",
                "WARNING",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--torch-threads",
                "1",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists():
            info = json.loads(port_file.read_text())
            return ServerProcess(process, int(info["port"]), info["metrics_port"], log)
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    process.kill()
    process.wait(timeout=10)
    raise RuntimeError(f"server did not start within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """bundle, index_a, index_b, bad: see artifacts.build_all."""
    pytest.importorskip("mol_train")
    return build_all(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="session")
def token_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tokens")
    (root / "token").write_text(TOKEN + "\n")
    (root / "admin").write_text(ADMIN_TOKEN + "\n")
    return root / "token", root / "admin"


@pytest.fixture(scope="session")
def server(
    artifacts: dict[str, Path], token_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The main server: bundle, alias prod -> index_a, tokens, metrics, 1 ms micro-batching."""
    proc = start_server(
        tmp_path_factory.mktemp("server"),
        "--bundle",
        str(artifacts["bundle"]),
        "--index",
        f"prod={artifacts['index_a']}",
        "--token-file",
        str(token_files[0]),
        "--admin-token-file",
        str(token_files[1]),
        "--metrics-port",
        "0",
        "--max-wait-ms",
        "1",
    )
    yield proc
    proc.stop()
