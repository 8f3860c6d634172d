"""Compile the fused CPU kernel (``kernels/cpu_pyramid.c``) at first use, cache it, load it.

The kernel is built for the machine it runs on (``-march=native``) with the channel counts as
constants, one shared object per (dtype, Cq, Cv), with the C compiler named by ``$CC`` (default
``cc``). Nothing is compiled at install time: where no compiler is found the ``"cpu_fused"``
backend is simply not offered (see :func:`compiler_problem`) and ``"auto"`` keeps the torch path.

Cache: ``$TRI_PANET_CACHE_DIR`` or ``~/.cache/tri_panet``, under ``cpu_kernels/``; the file name
holds a hash of the sources, the flags, the compiler's version and the CPU's model and flags, so
a changed source, compiler or machine (a home folder shared between machines) builds anew. Each
file is written under a temporary name and renamed into place (atomic), so two processes building
at once, or a process killed mid-build, never leave a broken file under the final name.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

# tri_panet.kernels is the repository's kernels/ folder (package-dir mapping): found by the import
# system, not by a path relative to this file. Its __init__ is empty, so nothing heavy runs.
SOURCE_DIR = Path(importlib.resources.files("tri_panet.kernels"))
SOURCES = ("cpu_pyramid.c", "cpu_common.h")
# -ffast-math lets gcc vectorise exp and the max / sum reductions (the kernel keeps every value
# finite); the link step leaves it out, which would link crtfastmath and flush subnormals for the
# whole process.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC")
#: dtype the kernel computes in -> (C type, symbol suffix)
REALS = {torch.float32: ("float", "_f32"), torch.float64: ("double", "_f64")}


def compiler() -> list[str]:
    """The C compiler command: ``$CC`` split as a shell would, else ``cc``."""
    return shlex.split(os.environ.get("CC", "cc")) or ["cc"]


@functools.cache
def _compiler_version(command: tuple[str, ...]) -> str:
    result = subprocess.run([*command, "--version"], capture_output=True, text=True, check=True)
    return result.stdout


def compiler_problem() -> str | None:
    """None where the backend can be offered, else why not (no compiler on the PATH; a platform
    whose C ``long`` is not 64 bits). Cheap: nothing is run (a broken compiler shows at first use)."""
    command = compiler()
    if shutil.which(command[0]) is None:
        return f"no C compiler: {command[0]!r} not found (set CC to one)"
    if ctypes.sizeof(ctypes.c_long) != 8:
        return "the kernel's layout needs a 64-bit C long"
    return None


def cache_dir() -> Path:
    """Where built kernels are kept: ``$TRI_PANET_CACHE_DIR`` (else ``$XDG_CACHE_HOME/tri_panet``, else
    ``~/.cache/tri_panet``), then ``cpu_kernels``."""
    root = os.environ.get("TRI_PANET_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tri_panet"
    return Path(root) / "cpu_kernels"


def _cpu_identity() -> str:
    """The CPU's model and feature flags (what -march=native compiles for); the platform elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() + platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


class BuildError(RuntimeError):
    """The kernel did not compile; the message holds the command and the compiler's output."""


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"building the CPU kernel failed: {shlex.join(command)}\n{result.stderr.strip()}")


@functools.cache
def load(dtype: torch.dtype, cq: int, cv: int, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """The kernel library for ``dtype`` (float32 or float64) and channel counts ``cq`` / ``cv``
    (multiples of the vector length: 16 always works), built into the cache on first use.

    ``extra_flags`` are appended to the compiler flags (for tuning experiments, e.g. ``-DUB=6``).
    Raises :class:`BuildError` when the compiler fails.
    """
    real, suffix = REALS[dtype]
    command = compiler()
    flags = [*COMPILE_FLAGS, f"-DREAL={real}", f"-DSUFFIX={suffix}", f"-DCQ={cq}", f"-DCV={cv}", *extra_flags]
    digest = hashlib.sha256()
    for part in (*[(SOURCE_DIR / name).read_bytes() for name in SOURCES], " ".join(flags).encode(),
                 _compiler_version(tuple(command)).encode(), _cpu_identity().encode()):  # fmt: skip
        digest.update(hashlib.sha256(part).digest())
    folder = cache_dir()
    target = folder / f"pyramid_{real}_cq{cq}_cv{cv}_{digest.hexdigest()[:16]}.so"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as scratch:
            obj, lib = Path(scratch) / "kernel.o", Path(scratch) / target.name
            _run([*command, *flags, "-c", str(SOURCE_DIR / "cpu_pyramid.c"), "-o", str(obj)])
            _run([*command, "-shared", str(obj), "-o", str(lib), "-lm"])
            os.replace(lib, target)
    library = ctypes.CDLL(str(target))
    for name in ("image_forward", "image_backward"):
        getattr(library, name + suffix).restype = ctypes.c_int
    return library
