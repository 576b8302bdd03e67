"""The client imports and works without torch; errors map onto mol_serve.errors; the CLI queries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

import mol_core
import mol_serve
from conftest import ADMIN_TOKEN, TOKEN, ServerProcess
from mol_serve import InvalidRequest, Overloaded, ServeError
from mol_serve.cli import main
from mol_serve.client import build_request, raise_for_rpc_error

NO_TORCH = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
from mol_serve.client import RetrievalClient
from mol_serve import InvalidRequest
with RetrievalClient(sys.argv[1], token=sys.argv[2], timeout=20) as client:
    result = client.retrieve(histories=[[1, 2, 3]], top_k=4)
    try:
        client.retrieve(histories=[[]], top_k=4)
        bad = "no error"
    except InvalidRequest as err:
        bad = err.code
print(json.dumps({"ids": result.ids, "bad": bad, "torch": [m for m in sys.modules if m.startswith("torch")]}))
"""


def test_public_api_and_version_lockstep() -> None:
    assert mol_serve.__version__ == mol_core.__version__
    assert "RetrievalClient" in mol_serve.__all__
    assert "__version__" in mol_serve.__all__
    assert all(hasattr(mol_serve, name) for name in mol_serve.__all__)


def test_client_works_where_torch_cannot_be_imported(server: ServerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, server.target, TOKEN],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(answer["ids"][0]) == 4
    assert answer["bad"] == "INVALID_ARGUMENT"
    assert answer["torch"] == []


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_text_queries_must_be_strings() -> None:
    request = build_request(top_k=3, texts=["statins and cholesterol", ""])
    assert [q.text for q in request.queries] == ["statins and cholesterol", ""]  # blank: the server refuses
    with pytest.raises(ValueError, match="a single string"):
        build_request(top_k=3, texts="statins")
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str; got NoneType"):
        build_request(top_k=3, texts=["statins", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"texts\[0\] must be a str; got bytes"):
        build_request(top_k=3, texts=[b"statins"])  # type: ignore[list-item]


def test_rpc_errors_map_to_library_errors() -> None:
    err = raise_for_rpc_error(_FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "top_k must be in [1, 5]"))
    assert isinstance(err, InvalidRequest)
    assert isinstance(err, ValueError)
    assert "top_k" in str(err)
    assert isinstance(
        raise_for_rpc_error(_FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")), Overloaded
    )
    other = raise_for_rpc_error(_FakeRpcError(grpc.StatusCode.DATA_LOSS, "x"))
    assert type(other) is ServeError
    assert other.code == "DATA_LOSS"


def test_cli_query_and_indexes(
    server: ServerProcess, token_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--target", server.target, "--token-file", str(token_files[0]), "--timeout", "20"]
    assert (
        main(["query", *common, "--history", "1,2,3", "--history", "4", "--top-k", "3", "--exclude-history"])
        == 0
    )
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(answer["ids"]) == 2
    assert all(len(row) == 3 for row in answer["ids"])
    assert not {1, 2, 3} & set(answer["ids"][0])
    assert main(["query", *common, "--history", "1", "--top-k", "0"]) == 3
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    assert main(["indexes", *common, "--admin-token-file", str(token_files[1])]) == 0
    assert "prod" in capsys.readouterr().out
    assert ADMIN_TOKEN not in capsys.readouterr().out
    assert main(["health", "--target", server.target, "--timeout", "20"]) == 0  # no token: open
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["health", "--target", f"127.0.0.1:{_closed_port()}", "--timeout", "2"]) == 3
    assert "UNAVAILABLE" in capsys.readouterr().err


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_refuses_public_address_without_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "without authentication" in capsys.readouterr().err
