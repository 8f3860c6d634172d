"""The public functional op ``pyramid_attention`` and its backend registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._checks import check_attention_inputs, check_patch_size, check_positive_finite
from .reference import pyramid_attention_reference
from .torch_backend import pyramid_attention_torch

#: name -> fn(query, keys, values, *, patch_size, softmax_scale, key_eps, fold_divisor)
_BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": pyramid_attention_reference,
    "torch": pyramid_attention_torch,
}


def register_backend(name: str, fn: Callable[..., torch.Tensor]) -> None:
    """Make ``fn`` selectable as ``backend=name`` (same signature as the reference)."""
    _BACKENDS[name] = fn


def available_backends() -> tuple[str, ...]:
    """Names accepted by ``backend=`` besides ``"auto"``."""
    return tuple(_BACKENDS)


def resolve_backend(backend: str, query: torch.Tensor) -> str:
    """The concrete backend ``backend`` stands for with this ``query`` (resolves ``"auto"``)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend == "auto":
        return "triton" if query.is_cuda and "triton" in _BACKENDS else "torch"
    if backend not in _BACKENDS:
        choices = ", ".join(repr(n) for n in ("auto", *_BACKENDS))
        raise ValueError(f"backend must be one of {choices}, got {backend!r}")
    return backend


def pyramid_attention(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    patch_size: int = 3,
    softmax_scale: float = 10.0,
    key_eps: float = 1e-4,
    fold_divisor: float = 4.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Pyramid attention (SPEC section 1): every k x k query patch attends to the k x k
    patches of all key levels with one joint softmax; value patches are pasted back.

    Args:
        query: [B, Cq, H, W] map whose patches are matched (not normalised).
        keys: L maps [B, Cq, H_l, W_l]; their patches are L2-normalised (floor ``key_eps``).
        values: L maps [B, Cv, H_l, W_l], the same spatial sizes as ``keys``.
        patch_size: odd patch side k; maps are zero-padded by k // 2.
        softmax_scale: multiplies the scores before the softmax.
        key_eps: floor of the key-patch norm.
        fold_divisor: the pasted output is divided by it.
        backend: "auto" (triton on CUDA when available, else torch), "torch",
            "reference" or any registered name.

    Returns:
        [B, Cv, H, W] in the dtype of ``query``.
    """
    query, keys, values = check_attention_inputs(query, keys, values)
    patch_size = check_patch_size(patch_size)
    softmax_scale = check_positive_finite("softmax_scale", softmax_scale)
    key_eps = check_positive_finite("key_eps", key_eps)
    fold_divisor = check_positive_finite("fold_divisor", fold_divisor)
    fn = _BACKENDS[resolve_backend(backend, query)]
    return fn(
        query,
        keys,
        values,
        patch_size=patch_size,
        softmax_scale=softmax_scale,
        key_eps=key_eps,
        fold_divisor=fold_divisor,
    )


# The fused Triton backend, only where triton is installed (it imports in ~0.1 s).
try:
    from .triton_backend import pyramid_attention_triton as _pyramid_attention_triton
except ImportError:  # no triton on this machine: "auto" resolves to "torch"
    pass
else:
    register_backend("triton", _pyramid_attention_triton)
