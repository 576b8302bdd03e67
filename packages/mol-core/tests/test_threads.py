"""mol_core.threads: the CPUs a process may use, and the flag > MOL_THREADS > CPUs rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mol_core.errors import ConfigError
from mol_core.threads import available_cpus, cgroup_cpu_limit, resolve_threads


@pytest.mark.parametrize(("text", "want"), [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1)])
def test_cgroup_v2_quota_rounds_up(tmp_path: Path, text: str, want: int | None) -> None:
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert cgroup_cpu_limit(tmp_path) == want


def test_resolve_threads_takes_the_flag_then_the_environment_then_the_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MOL_THREADS", raising=False)
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    assert resolve_threads() == resolve_threads(0) == available_cpus()
    assert resolve_threads(processes=4 * available_cpus()) == 1  # at least one thread per process
    assert resolve_threads(5) == 5
    monkeypatch.setenv("MOL_THREADS", "3")
    assert resolve_threads() == 3
    assert resolve_threads(None) == 3
    assert resolve_threads(2) == 2
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("MOL_THREADS", bad)
        with pytest.raises(ConfigError, match="MOL_THREADS must be a positive integer"):
            resolve_threads()
    with pytest.raises(ConfigError, match="threads must be >= 0"):
        resolve_threads(-1)
