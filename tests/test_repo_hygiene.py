"""Repository rules that a review would otherwise have to catch by eye."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Registry hosts and paths of the development machines must never be committed (docs/install.md). The
# pattern is assembled from pieces so that this file does not name them itself.
_HOSTS = [r"\.".join(parts) for parts in (("pypi", "org"), ("download", "pytorch", "org"), ("debian", "org"))]
_HOSTS += ["python" + "hosted", r"npmjs\.(org|com)"]
_PATHS = [
    "/" + "/".join(parts) + ("/" if len(parts) == 1 else "")
    for parts in (("opt", "wheels"), ("work",), ("farm",))
]
FORBIDDEN = re.compile("|".join(_HOSTS + _PATHS), re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing is tracked")
    files = [ROOT / name for name in out.split("\0") if name]
    return [f for f in files if f.is_file() and b"\0" not in f.read_bytes()[:4096]]


def test_no_registry_host_or_machine_path_is_committed() -> None:
    files = tracked_text_files()
    assert files, "git ls-files listed nothing"
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_the_pattern_catches_what_it_should() -> None:
    assert FORBIDDEN.search("see https://" + "pypi" + ".org/simple/torch")
    assert FORBIDDEN.search("--find-links /" + "opt/wheels")
    assert FORBIDDEN.search("cd /" + "work/main")
    assert not FORBIDDEN.search("python tools/install_torch.py --gpu")
