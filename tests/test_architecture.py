"""The package boundaries of docs/architecture.md: who may import whom, and versions in lockstep."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "mol-core": "mol_core",
    "mol-train": "mol_train",
    "mol-index": "mol_index",
    "mol-serve": "mol_serve",
}

# Top-level modules each package's source may NOT import (dependencies point one way).
FORBIDDEN_IMPORTS = {
    "mol-core": {"mol_train", "mol_index", "mol_serve", "faiss", "torchrec", "fbgemm_gpu", "grpc"},
    "mol-index": {"mol_train", "mol_serve", "torchrec", "fbgemm_gpu", "grpc"},
    "mol-train": {"mol_serve"},
    "mol-serve": {"mol_train", "torchrec", "fbgemm_gpu"},
}


def imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_dependencies_point_one_way(package: str) -> None:
    src = ROOT / "packages" / package / "src" / PACKAGES[package]
    generated = src / "proto"  # generated gRPC stubs import grpc; only mol-serve imports those modules
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_modules(path) & FORBIDDEN_IMPORTS[package])
        for path in src.rglob("*.py")
        if generated not in path.parents
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_sibling_versions_move_in_lockstep() -> None:
    projects = {
        name: tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())["project"]
        for name in PACKAGES
    }
    versions = {name: p["version"] for name, p in projects.items()}
    assert len(set(versions.values())) == 1, versions
    version = versions["mol-core"]
    for name, project in projects.items():
        for requirement in project.get("dependencies", []):
            base = requirement.split(";")[0].replace(" ", "")
            sibling = next(
                (s for s in PACKAGES if base.startswith(s) and not base[len(s) :][:1].isalnum()), None
            )
            if sibling and sibling != name:
                assert base.endswith(f"=={version}"), (
                    f"{name} must pin {sibling}=={version}; has {requirement!r}"
                )


def test_every_package_has_readme_tests_and_py_typed() -> None:
    for name, module in PACKAGES.items():
        package = ROOT / "packages" / name
        assert (package / "README.md").is_file(), name
        assert (package / "src" / module / "py.typed").is_file(), name
        assert list((package / "tests").glob("test_*.py")), name
