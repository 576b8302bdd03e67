"""Thread count: the CPUs this process may use (affinity, cgroup quota), divided among local processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mol_core.errors import ConfigError
from mol_train.threads import available_cpus, cgroup_cpu_limit, set_torch_threads


@pytest.mark.parametrize(
    ("text", "want"), [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1), ("200000 100000", 2)]
)
def test_cgroup_v2_quota(tmp_path: Path, text: str, want: int | None) -> None:
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert cgroup_cpu_limit(tmp_path) == want


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_available_cpus_is_at_most_the_affinity_mask() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_set_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("MOL_THREADS", raising=False)
    try:
        assert set_torch_threads(1) == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * available_cpus()))
        assert set_torch_threads(0) == 1  # never below one thread per process
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert set_torch_threads(0) == available_cpus()
        with pytest.raises(ConfigError, match="threads must be >= 0"):
            set_torch_threads(-1)
        monkeypatch.setenv("MOL_THREADS", "3")  # the environment, when no flag is given
        assert set_torch_threads(0) == 3
        assert set_torch_threads(2) == 2  # a flag wins
        monkeypatch.setenv("MOL_THREADS", "many")
        with pytest.raises(ConfigError, match="MOL_THREADS must be a positive integer; got 'many'"):
            set_torch_threads(0)
    finally:
        torch.set_num_threads(before)
