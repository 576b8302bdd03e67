"""The python examples in docs/mol-train-models.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "mol-train-models.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL) if DOC.exists() else []


@pytest.mark.skipif(not DOC.exists(), reason="docs/ is not next to this checkout")
@pytest.mark.parametrize("number", range(2))
def test_doc_example_runs(number: int) -> None:
    assert len(BLOCKS) == 2
    exec(compile(BLOCKS[number], f"{DOC.name}#{number + 1}", "exec"), {"__name__": "__doc_example__"})
