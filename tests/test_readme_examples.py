"""Every ```python example in the READMEs runs as written (documentation that cannot rot silently)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", *sorted(ROOT.glob("packages/*/README.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)

EXAMPLES = [
    pytest.param(code, id=f"{path.relative_to(ROOT)}#{number}")
    for path in READMES
    for number, code in enumerate(BLOCK.findall(path.read_text()), 1)
]


def test_there_are_examples_to_run() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("code", EXAMPLES)
def test_readme_example_runs(
    code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write files (runs/, bundles/)
    exec(compile(code, "<readme>", "exec"), {"__name__": "__readme__"})
