"""ServeConfig validation and TOML loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from mol_core.errors import ConfigError
from mol_serve.config import ServeConfig, is_loopback, load_config


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_public_address_needs_token_or_insecure() -> None:
    with pytest.raises(ConfigError, match="without authentication"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", token="t").token == "t"
    assert ServeConfig(host="0.0.0.0", insecure=True).insecure


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch": 0},
        {"max_concurrent": -1},
        {"port": 70000},
        {"default_algorithm": "magic"},
        {"tls_cert": Path("c.pem")},
        {"tls_client_ca": Path("ca.pem")},
        {"max_message_bytes": 10},
        {"indexes": {"a": Path("x")}, "default_alias": "b"},
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ServeConfig(**kwargs)  # type: ignore[arg-type]


def test_toml_file_with_relative_paths_and_token_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    file = tmp_path / "serve.toml"
    file.write_text(
        'port = 5000\nbundle = "b"\ntoken_file = "secret"\nmax_batch = 8\n[indexes]\nprod = "idx"\n'
    )
    config = load_config(file, max_batch=16)
    assert config.port == 5000
    assert config.max_batch == 16
    assert config.bundle == tmp_path / "b"
    assert config.indexes == {"prod": tmp_path / "idx"}
    assert config.token == "s3cret"
    assert config.resolved_default_alias == "prod"
    file.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown config keys"):
        load_config(file)


def test_kernels_and_algorithms_match_mol_index() -> None:
    from mol_index import Algorithm
    from mol_index.params import KERNELS
    from mol_serve.config import ALGORITHMS
    from mol_serve.config import KERNELS as SERVE_KERNELS

    assert SERVE_KERNELS == KERNELS
    assert set(ALGORITHMS) == {a.value for a in Algorithm}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N; got 'gpu'"),
        ({"device": "cuda:x"}, "device must be auto, cpu, cuda or cuda:N"),
        (
            {"kernel": "fused"},
            "kernel must be one of 'auto', 'torch', 'torch-bf16', 'cpu', 'triton'; got 'fused'",
        ),
    ],
)
def test_device_and_kernel_are_checked(kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        ServeConfig(**kwargs)  # type: ignore[arg-type]


def test_resolved_device() -> None:
    import torch

    assert ServeConfig(device="cpu").resolved_device() == "cpu"
    assert ServeConfig().resolved_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
            ServeConfig(device="cuda:1").resolved_device()


def test_faiss_indexes_stay_on_the_cpu_under_auto_only() -> None:
    import torch

    gpu = "cuda" if torch.cuda.is_available() else "cpu"
    assert ServeConfig().index_devices() == (gpu, "cpu")
    assert ServeConfig(device="cpu").index_devices() == ("cpu", "cpu")
