"""The skeleton installs, imports and stays in version lockstep with mol-core."""

from __future__ import annotations

import mol_core
import mol_train


def test_imports_and_versions_move_in_lockstep() -> None:
    assert mol_train.__version__ == mol_core.__version__
    assert mol_train.__all__ == ["__version__"]
