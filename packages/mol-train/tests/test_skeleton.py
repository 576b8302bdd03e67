"""The package imports, curates its public API and stays in version lockstep with mol-core."""

from __future__ import annotations

import inspect

import mol_core
import mol_train


def test_public_api_is_documented_and_versions_move_in_lockstep() -> None:
    assert mol_train.__version__ == mol_core.__version__
    assert len(mol_train.__all__) == len(set(mol_train.__all__))
    for name in mol_train.__all__:
        obj = getattr(mol_train, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name
