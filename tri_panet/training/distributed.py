"""Multi-process data parallelism: ``torchrun`` set-up, DDP helpers, a local CPU launcher.

``torchrun --nproc_per_node N -m tri_panet.cli train ...`` (or the ``tri-panet`` script)
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables;
:func:`init_distributed` reads them and joins the process group: NCCL when CUDA is
available, gloo otherwise (so the same code trains on CPUs and is tested here).
Without those variables everything runs as a single process (world size 1).

Only rank 0 writes checkpoints, logs and the final weights (:attr:`DistInfo.is_main`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "dist_info", "cleanup", "barrier", "all_reduce_mean", "launch_cpu"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one process that writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group with more than one process is running."""
        return self.world_size > 1


def dist_info() -> DistInfo:
    """The current process's rank and world size (world size 1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo()


def init_distributed(
    backend: str | None = None,
    *,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    timeout_s: float = 1800.0,
) -> DistInfo:
    """Join the process group described by ``torchrun``'s environment (or the arguments).

    ``rank``/``world_size`` default to ``RANK``/``WORLD_SIZE``; ``init_method`` to
    ``env://`` (``MASTER_ADDR``/``MASTER_PORT``), or pass ``file:///path`` /
    ``tcp://host:port``. ``backend`` defaults to "nccl" with CUDA, else "gloo".
    With a world size of 1 no group is created. Returns :func:`dist_info`.
    Calling it again in a process that already joined is a no-op.
    """
    if dist.is_available() and dist.is_initialized():
        return dist_info()
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if world_size == 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        # one GPU per process: bind it before the group starts
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    dist.init_process_group(
        backend=backend,
        init_method=init_method or "env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return dist_info()


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op without a group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all processes (a copy; the value itself without a group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value.detach().clone()
    t = value.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def _launch_entry(rank: int, fn: Callable, world_size: int, init_file: str, threads: int, args: tuple) -> None:
    if threads:
        torch.set_num_threads(threads)
    os.environ["RANK"] = str(rank)
    os.environ["LOCAL_RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    init_distributed("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        barrier()  # leave together: no rank tears its gloo pairs down while a peer still uses them
    finally:
        cleanup()


def launch_cpu(fn: Callable, world_size: int, *args, rendezvous_file: str, threads: int = 1) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh CPU processes joined in
    a gloo group (a ``torchrun`` stand-in for tests and quick experiments).

    ``rendezvous_file``: a path that does not exist yet (the ``file://`` rendezvous; use a
    temporary folder). ``fn`` must be importable by name (defined at module level).
    ``threads``: torch threads per process. Raises if any process fails.
    """
    import torch.multiprocessing as mp

    if os.path.exists(rendezvous_file):
        raise ValueError(f"rendezvous_file {rendezvous_file!r} must not exist yet")
    mp.spawn(_launch_entry, args=(fn, world_size, os.path.abspath(rendezvous_file), threads, args), nprocs=world_size)
