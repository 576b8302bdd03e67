"""Process-group setup: torchrun's environment for N processes, a one-rank gloo group for one.

Under ``torchrun --nproc_per_node N ...`` every process finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in its environment; :func:`init_distributed` reads them and joins the
group with ``gloo`` on CPU or ``nccl`` on CUDA (one GPU per process, ``cuda:<LOCAL_RANK>``).

Without those variables (a plain ``python train.py``) it creates a one-rank ``gloo`` group over an
in-memory store: no port, no network, nothing to clean up but the group. One process therefore runs the
very same code as N processes (DistributedModelParallel, the same sharding plan with every row on rank 0,
the same fused optimizer), which is what makes the 1-vs-N comparison meaningful; the cost is a few
no-op collectives per step.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from mol_core.errors import ConfigError

__all__ = ["DistributedContext", "destroy_distributed", "init_distributed", "process_group_threads"]

logger = logging.getLogger(__name__)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_GLOO_THREAD_PREFIXES = ("pt_gloo", "gloo_")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the run.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        device: ``cpu`` or ``cuda:<local_rank>``.
        backend: ``"gloo"`` or ``"nccl"``.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs, writes checkpoints and exports."""
        return self.rank == 0


def _int_var(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "")
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer; got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"environment variable {name} must be >= 0; got {value}")
    return value


def init_distributed(
    *, device: str | torch.device | None = None, timeout_s: float = 600.0
) -> DistributedContext:
    """Joins (or creates) the default process group and picks this process's device.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available). With CUDA each process uses
            ``cuda:<LOCAL_RANK>``.
        timeout_s: how long collectives wait for the other ranks before failing.

    The environment decides the mode: torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT``, and the group is joined through ``env://`` (which also uses
    torchrun's agent store when torchrun provides one). Without ``WORLD_SIZE`` the process runs alone.

    Returns:
        The :class:`DistributedContext`.

    Raises:
        ConfigError: a group already exists, some torchrun variables are missing or malformed, or
            CUDA is asked for but not available.
    """
    env = os.environ
    if dist.is_initialized():
        raise ConfigError(
            "a torch.distributed process group already exists; call destroy_distributed() first"
        )
    wanted = torch.device(device) if device is not None else None
    use_cuda = torch.cuda.is_available() if wanted is None else wanted.type == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use device='cpu'")
    backend = "nccl" if use_cuda else "gloo"
    timeout = timedelta(seconds=timeout_s)
    if "WORLD_SIZE" in env:
        missing = [name for name in _TORCHRUN_VARS if not env.get(name)]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE is set but {', '.join(missing)} is not; launch with torchrun, which sets "
                f"all of {', '.join(_TORCHRUN_VARS)}"
            )
        rank, world_size = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
        local_rank = _int_var(env, "LOCAL_RANK") if env.get("LOCAL_RANK") else rank
        if world_size < 1 or rank >= world_size:
            raise ConfigError(f"need 0 <= RANK < WORLD_SIZE; got RANK={rank}, WORLD_SIZE={world_size}")
        _int_var(env, "MASTER_PORT")
    else:
        rank, world_size, local_rank = 0, 1, 0
    device_out = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device_out)
    if world_size > 1 or "WORLD_SIZE" in env:
        dist.init_process_group(
            backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout
        )
    else:  # one process: an in-memory store, no port
        store = dist.HashStore()  # type: ignore[attr-defined]
        dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
    logger.info("process group: rank %d of %d, backend %s, device %s", rank, world_size, backend, device_out)
    return DistributedContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=device_out, backend=backend
    )


def destroy_distributed() -> None:
    """Leaves the default process group, if there is one (safe to call twice), and stops its threads.

    Waits at a barrier first, so that rank 0, which hosts the rendezvous store, does not tear the store
    down while another rank is still using it.

    ``destroy_process_group`` alone leaves gloo's worker and socket threads running for as long as any
    object (a model wrapped by DistributedModelParallel, its DDP reducer) still refers to the group, and
    a finished model can sit in reference cycles that only the garbage collector frees. Left to
    interpreter shutdown, those threads can touch Python while it is being torn down, and the process
    can then abort with ``terminate called without an active exception`` after a successful run. So this
    function runs the collector once the group is destroyed, which joins the threads now. Drop your own
    references to the sharded model before calling it; a warning names the threads that still run.
    """
    if dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
    gc.collect()
    still_running = process_group_threads()
    if still_running:
        logger.warning(
            "%d process-group thread(s) still run after destroy_distributed() (%s): something, usually "
            "the sharded model, still refers to the process group; drop it before the process exits",
            len(still_running),
            ", ".join(sorted(still_running)),
        )


def process_group_threads() -> list[str]:
    """The names of this process's gloo threads that are still running.

    Reads ``/proc/self/task/*/comm`` (Linux); elsewhere it returns ``[]``. gloo names its threads
    ``pt_gloo_runloop`` (collective workers) and ``gloo_tcp_loop`` (the socket loop).

    Returns:
        One name per running thread, in no particular order.
    """
    tasks = Path("/proc/self/task")
    names = []
    try:
        threads = list(tasks.iterdir())
    except OSError:
        return []
    for thread in threads:
        try:
            name = (thread / "comm").read_text().strip()
        except OSError:  # the thread ended while we listed them
            continue
        if name.startswith(_GLOO_THREAD_PREFIXES):
            names.append(name)
    return names
