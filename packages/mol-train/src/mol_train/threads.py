"""torch's thread count for mol-train: :mod:`mol_core.threads` divided among torchrun's local processes.

``available_cpus`` and ``cgroup_cpu_limit`` live in :mod:`mol_core.threads` (every mol package uses them)
and are re-exported here.
"""

from __future__ import annotations

import logging
import os

import torch

from mol_core.threads import available_cpus, cgroup_cpu_limit, resolve_threads

__all__ = ["available_cpus", "cgroup_cpu_limit", "set_torch_threads"]

logger = logging.getLogger(__name__)


def set_torch_threads(threads: int = 0) -> int:
    """Sets torch's intra-op threads to ``threads``; returns the count.

    With ``threads = 0``: ``MOL_THREADS`` when set, else :func:`available_cpus` divided among the
    processes of this machine (``LOCAL_WORLD_SIZE``, set by torchrun), at least 1
    (:func:`mol_core.threads.resolve_threads`).

    Raises:
        ConfigError: ``threads`` is negative, or ``MOL_THREADS`` is not a positive integer.
    """
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or "1"))
    count = resolve_threads(threads, processes=local_processes)
    torch.set_num_threads(count)
    logger.info("torch uses %d thread(s)", count)
    return count
