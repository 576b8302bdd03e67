"""The skeleton installs, imports and stays in version lockstep with mol-core."""

from __future__ import annotations

import mol_core
import mol_index


def test_imports_and_versions_move_in_lockstep() -> None:
    assert mol_index.__version__ == mol_core.__version__
    assert mol_index.__all__ == ["__version__"]
