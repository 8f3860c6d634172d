"""Where to run: the device (``resolve_device``) and the CPU threads (``choose_threads``)."""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator

import torch

__all__ = ["DEVICE_NAMES", "check_device_name", "choose_threads", "free_cores", "resolve_device", "threads"]

#: What ``--device`` accepts (plus ``cuda:N``).
DEVICE_NAMES = ("auto", "cpu", "cuda")

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def check_device_name(name: object) -> str:
    """``name`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ValueError otherwise
    (names torch knows but this library does not run on, such as ``mps`` or ``meta``, too)."""
    if not isinstance(name, str) or not (name in DEVICE_NAMES or _CUDA_INDEX.match(name)):
        raise ValueError(f"device must be one of {', '.join(DEVICE_NAMES)} or cuda:N, got {name!r}")
    return name


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device ``name`` (see :func:`check_device_name`) stands for: ``auto`` is
    ``cuda:<local_rank>`` when CUDA is available, else the CPU; ``cuda`` is
    ``cuda:<local_rank>`` (one GPU per process under ``torchrun``); ``cpu`` and ``cuda:N``
    are taken as they are. ValueError when the machine lacks the device asked for."""
    check_device_name(name)
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def free_cores() -> int:
    """The CPU cores this process may use that other work leaves free: the cores of its
    affinity mask less the 1-minute load average (rounded), at least 1.

    Why not all cores: the attention's CPU path runs hundreds of small ops per forward, each
    split across torch's threads; when another process holds a core, every op waits for the
    thread that shares it. On the project's 2-core machine, with one other process busy, the
    demo took 173 s with 2 threads and 12-13 s with 1 (11-12 s with this default).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows)
        load = 0.0
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def choose_threads(requested: int | None = None) -> int:
    """The CPU threads to use: ``requested`` if given, else ``OMP_NUM_THREADS`` if set (as
    ``torchrun`` does for several processes), else :func:`free_cores`."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"threads must be an int >= 1, got {requested!r}")
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return free_cores()


@contextlib.contextmanager
def threads(requested: int | None = None) -> Iterator[int]:
    """Within the block torch uses :func:`choose_threads` (``requested``) CPU threads; the
    previous count comes back afterwards. Yields the count."""
    saved = torch.get_num_threads()
    count = choose_threads(requested)
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(saved)
