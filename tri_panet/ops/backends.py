"""The table of backends (name -> implementation) and how ``backend="auto"`` chooses, and says why.

``"auto"`` runs ``"triton"`` for CUDA tensors and ``"torch"`` everywhere else. ``"cpu_fused"``
(the fused C kernel for CPU tensors, compiled at first use; about 2x the torch path) is offered
where a C compiler is on the PATH and is only run when asked for by name. On a CUDA tensor
it falls back to ``"torch"`` when Triton cannot be used: not installed or failed to import
(the exception is kept), or refused because ``torch.use_deterministic_algorithms(True)`` is
set (the Triton folds use float32 atomics); each such reason is warned about once per process.
float64 also goes to ``"torch"`` (the kernels implement half types and float32 only), silently.

:func:`explain_backend` returns the choice and its reason; with ``TRI_PANET_DEBUG=1`` in the
environment every new choice is also printed to stderr, once.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import cpu_build
from .cpu_fused import pyramid_attention_cpu_fused
from .reference import pyramid_attention_reference
from .torch_tiled import pyramid_attention_torch


def _import_triton():
    """(the Triton launcher module, None), or (None, why it cannot be imported)."""
    try:
        from . import triton_launcher
    except Exception as exc:  # not only ImportError: a broken Triton install raises anything
        return None, f"{type(exc).__name__}: {exc}"
    return triton_launcher, None


_triton_launcher, TRITON_IMPORT_ERROR = _import_triton()

#: name -> fn(query, keys, values, *, patch_size, softmax_scale, key_eps, fold_divisor) -> out.
BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": pyramid_attention_reference,
    "torch": pyramid_attention_torch,
}
if _triton_launcher is not None:
    BACKENDS["triton"] = _triton_launcher.pyramid_attention_triton
#: Why "cpu_fused" is not offered here (None: it is; the kernel is compiled at first use).
CPU_FUSED_PROBLEM = cpu_build.compiler_problem()
if CPU_FUSED_PROBLEM is None:
    BACKENDS["cpu_fused"] = pyramid_attention_cpu_fused


class BackendChoice(NamedTuple):
    """What :func:`explain_backend` returns: the backend that runs and why. ``fallback``: "auto"
    wanted Triton for a CUDA tensor and could not use it (warned about once)."""

    backend: str
    reason: str
    fallback: bool = False

    def __str__(self) -> str:
        return f"{self.backend} ({self.reason})"


def register_backend(name: str, fn: Callable[..., torch.Tensor]) -> None:
    """Make ``fn`` selectable as ``backend=name`` (the signature of the reference)."""
    BACKENDS[name] = fn


def available_backends() -> tuple[str, ...]:
    """Names accepted by ``backend=`` besides ``"auto"`` (``"triton"`` only where it imported)."""
    return tuple(BACKENDS)


def _choose(backend: str, device_type: str, dtype: torch.dtype, deterministic: bool) -> BackendChoice:
    """The choice for one kind of call (pure: the same arguments give the same choice)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend != "auto":
        if backend not in BACKENDS:
            if backend == "triton" and TRITON_IMPORT_ERROR is not None:
                raise ValueError(f"backend='triton' is unavailable: Triton failed to import ({TRITON_IMPORT_ERROR})")
            if backend == "cpu_fused" and CPU_FUSED_PROBLEM is not None:
                raise ValueError(f"backend='cpu_fused' is unavailable: {CPU_FUSED_PROBLEM}")
            choices = ", ".join(repr(n) for n in ("auto", *BACKENDS))
            raise ValueError(f"backend must be one of {choices}, got {backend!r}")
        return BackendChoice(backend, "requested")
    if device_type != "cuda":
        return BackendChoice("torch", f"backend='auto' on a {device_type} tensor: the tiled torch path")
    if dtype == torch.float64:
        return BackendChoice("torch", "backend='auto' on a float64 CUDA tensor: the Triton kernels have no float64")
    if TRITON_IMPORT_ERROR is not None:
        reason = f"backend='auto' on a CUDA tensor, but Triton failed to import: {TRITON_IMPORT_ERROR}"
        return BackendChoice("torch", reason, fallback=True)
    if deterministic:
        reason = (
            "backend='auto' on a CUDA tensor under torch.use_deterministic_algorithms(True): the Triton backend "
            f"is not deterministic ({_triton_launcher.NONDETERMINISM})"
        )
        return BackendChoice("torch", reason, fallback=True)
    return BackendChoice("triton", "backend='auto' on a CUDA tensor: the fused Triton kernels")


def explain_backend(query: torch.Tensor, backend: str = "auto") -> BackendChoice:
    """The backend ``pyramid_attention(query, ..., backend=backend)`` runs, and why.

    Depends on the name, ``query``'s device type and dtype, whether Triton imported and
    whether deterministic algorithms are enabled. Raises for unknown names, as the op does.
    """
    return _choose(backend, query.device.type, query.dtype, torch.are_deterministic_algorithms_enabled())


def resolve_backend(backend: str, query: torch.Tensor) -> str:
    """The name of the backend ``backend`` stands for with this ``query`` (resolves "auto";
    raises TypeError / ValueError for a bad name)."""
    return explain_backend(query, backend).backend


#: Choices already reported (warned about, or printed with TRI_PANET_DEBUG=1).
_reported: set[BackendChoice] = set()


# Under torch.compile a constant of the trace: dynamo calls it at tracing time, as eager code
# would (so the warning and the debug line appear there too), and guards its inputs.
@torch.compiler.assume_constant_result
def _choose_and_report(backend: str, device_type: str, dtype: torch.dtype, deterministic: bool) -> str:
    choice = _choose(backend, device_type, dtype, deterministic)
    if choice not in _reported:
        _reported.add(choice)
        if choice.fallback:
            warnings.warn(f"tri_panet: falling back to the torch path: {choice.reason}", RuntimeWarning, stacklevel=4)
        if os.environ.get("TRI_PANET_DEBUG") == "1":
            print(f"tri_panet: pyramid_attention runs {choice}", file=sys.stderr)
    return choice.backend


def implementation(backend: str, query: torch.Tensor) -> Callable[..., torch.Tensor]:
    """The function ``pyramid_attention`` runs for ``backend`` and ``query``; reports a new
    choice once (a warning when "auto" falls back from Triton; a stderr line with TRI_PANET_DEBUG=1)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    name = _choose_and_report(backend, query.device.type, query.dtype, torch.are_deterministic_algorithms_enabled())
    return BACKENDS[name]
