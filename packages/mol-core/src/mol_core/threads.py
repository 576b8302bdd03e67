"""How many threads a mol process should use: the CPUs it may actually run on.

``os.cpu_count()`` counts the machine's CPUs, not the ones a container or ``taskset`` gives this process,
and torch's default thread count follows it, which oversubscribes a container or a shared machine (one
thread against torch's default was measured 15-34x faster on a busy 2-core machine; docs/operations.md,
"Threads"). :func:`available_cpus` takes the smaller of the CPU affinity mask and the cgroup CPU quota
(v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``); :func:`resolve_threads` turns a flag, the
``MOL_THREADS`` environment variable or that default into one count, as every mol CLI and the server do.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from mol_core.errors import ConfigError

__all__ = ["THREADS_ENV", "available_cpus", "cgroup_cpu_limit", "limit_tokenizer_threads", "resolve_threads"]

#: The environment variable that sets the thread count when no flag does.
THREADS_ENV = "MOL_THREADS"
#: The thread count of the Rust ``tokenizers`` library's pool (rayon), read when the pool first starts.
TOKENIZER_THREADS_ENV = "RAYON_NUM_THREADS"

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


def resolve_threads(threads: int | None = None, *, processes: int = 1) -> int:
    """The thread count to use: ``threads`` when given and positive, else ``MOL_THREADS`` when set, else
    :func:`available_cpus` divided among ``processes`` processes of this machine; at least 1.

    Raises:
        ConfigError: a negative ``threads``, or a ``MOL_THREADS`` that is not a positive integer.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ConfigError(f"threads must be >= 0 (0 = the CPUs this process may use); got {threads!r}")
        if threads > 0:
            return threads
    text = os.environ.get(THREADS_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"{THREADS_ENV} must be a positive integer; got {text!r}")
        return int(text)
    return max(1, available_cpus() // max(1, processes))


def limit_tokenizer_threads(threads: int) -> None:
    """Gives the ``tokenizers`` library's thread pool ``threads`` threads unless its environment variable
    (``RAYON_NUM_THREADS``) is set already; without it, the pool takes every CPU of the machine.

    Takes effect only if no text was tokenised in parallel in this process before (the pool starts then).
    """
    os.environ.setdefault(TOKENIZER_THREADS_ENV, str(max(1, int(threads))))
