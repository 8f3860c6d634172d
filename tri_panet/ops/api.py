"""``pyramid_attention``: the public functional op. Checks its arguments, then runs a backend."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._checks import check_attention_inputs, check_patch_size, check_positive_finite
from .backends import implementation


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
    """Pyramid attention as the official PANet code computes it: every k x k query patch attends
    to the k x k patches of all key levels with one joint softmax over s * <q, k / max(|k|, eps)>,
    and the attention-weighted value patches are pasted back (overlap-add), divided by fold_divisor.

    Args:
        query: [B, Cq, H, W] map whose patches are matched (not normalised).
        keys: L maps [B, Cq, H_l, W_l]; their patches are L2-normalised (floor ``key_eps``).
        values: L maps [B, Cv, H_l, W_l], the same spatial sizes as ``keys``.
        patch_size: odd patch side k; maps are zero-padded by k // 2.
        softmax_scale: multiplies the scores before the softmax.
        key_eps: floor of the key-patch norm.
        fold_divisor: the pasted output is divided by it.
        backend: "auto" (triton for CUDA tensors when it can run, else torch; see
            :func:`tri_panet.ops.explain_backend`), "torch", "triton", "cpu_fused" (CPU
            tensors, 3 x 3 patches; where a C compiler is found), "reference" or any registered name.

    Returns:
        [B, Cv, H, W] in the dtype of ``query``.
    """
    query, keys, values = check_attention_inputs(query, keys, values)
    patch_size = check_patch_size(patch_size)
    softmax_scale = check_positive_finite("softmax_scale", softmax_scale)
    key_eps = check_positive_finite("key_eps", key_eps)
    fold_divisor = check_positive_finite("fold_divisor", fold_divisor)
    run = implementation(backend, query)
    return run(
        query,
        keys,
        values,
        patch_size=patch_size,
        softmax_scale=softmax_scale,
        key_eps=key_eps,
        fold_divisor=fold_divisor,
    )
