"""How many threads torch should use: the CPUs this process may actually run on.

``os.cpu_count()`` counts the machine's CPUs, not the ones a container or ``taskset`` gives this process;
torch's default follows the former, which oversubscribes a container or a shared machine
(docs/mol-train-recipe.md, "Threads"). :func:`available_cpus` takes the smallest of the
CPU affinity mask and the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from mol_core.errors import ConfigError

__all__ = ["available_cpus", "cgroup_cpu_limit", "set_torch_threads"]

logger = logging.getLogger(__name__)

_CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = _CGROUP) -> int | None:
    """CPUs allowed by the cgroup quota under ``root`` (rounded up), or ``None`` when there is no quota."""
    v2 = root / "cpu.max"
    try:
        if v2.is_file():
            quota, _, period = v2.read_text().strip().partition(" ")
            if quota == "max":
                return None
            return max(1, math.ceil(int(quota) / int(period or "100000")))
        v1_quota, v1_period = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if v1_quota.is_file() and v1_period.is_file():
            quota_us = int(v1_quota.read_text().strip())
            if quota_us <= 0:
                return None
            return max(1, math.ceil(quota_us / int(v1_period.read_text().strip())))
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """The CPUs this process may run on: ``min(affinity mask, cgroup quota)``, at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(count, limit) if limit is not None else count)


def set_torch_threads(threads: int = 0) -> int:
    """Sets torch's intra-op threads to ``threads``; returns the count.

    With ``threads = 0`` the count is :func:`available_cpus` divided among the processes of this machine
    (``LOCAL_WORLD_SIZE``, set by torchrun), at least 1.

    Raises:
        ConfigError: ``threads`` is negative.
    """
    if threads < 0:
        raise ConfigError(f"threads must be >= 0 (0 = the CPUs this process may use); got {threads}")
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or "1"))
    count = threads or max(1, available_cpus() // local_processes)
    torch.set_num_threads(count)
    logger.info("torch uses %d thread(s)", count)
    return count
