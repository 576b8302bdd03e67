"""The curated public API: every exported name exists, is documented, and nothing is exported twice."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = [
    "mol_core",
    "mol_core.errors",
    "mol_core.similarity",
    "mol_core.losses",
    "mol_core.metrics",
    "mol_core.manifest",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_all_names_exist_and_are_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no module docstring"
    exported = module.__all__
    assert len(exported) == len(set(exported)), f"{module_name}.__all__ repeats a name"
    for name in exported:
        obj = getattr(module, name)  # raises if a name is exported but missing
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"


def test_errors_form_one_hierarchy() -> None:
    from mol_core import ArtifactError, ConfigError, MolError, ShapeError

    for error in (ArtifactError, ConfigError, ShapeError):
        assert issubclass(error, MolError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ShapeError, ValueError)


def test_importing_mol_core_errors_and_protos_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mol_core, mol_core.errors\n"
        "from mol_core.proto.mol.v1 import retrieval_pb2, manifest_pb2\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
        "from mol_core import MoLSimilarity\n"
        "assert 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
