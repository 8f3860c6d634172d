"""The naive pyramid attention, written the way the official PANet code computes it.

For each image: unfold every key level into k x k filters, L2-normalise them (floored at
``key_eps``), match them against the zero-padded query with ``conv2d``, take one softmax
over the keys of all levels, paste the value patches back with ``conv_transpose2d`` and
divide by ``fold_divisor``. It materialises the whole [keys, H, W] score tensor per image:
this is the ground truth every other backend is tested against and the "naive version"
the benchmarks compare with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _level_filters(levels: Sequence[torch.Tensor], b: int, patch_size: int) -> torch.Tensor:
    """Patches of image ``b`` of every level as conv filters [keys, C, k, k], level 0 first."""
    filters = []
    for x in levels:
        cols = F.unfold(x[b : b + 1], patch_size, padding=patch_size // 2)  # [1, C*k*k, n]
        filters.append(cols[0].t().reshape(-1, x.shape[1], patch_size, patch_size))
    return torch.cat(filters, dim=0)


def pyramid_attention_reference(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    patch_size: int = 3,
    softmax_scale: float = 10.0,
    key_eps: float = 1e-4,
    fold_divisor: float = 4.0,
) -> torch.Tensor:
    """Pyramid attention by brute force (see ``pyramid_attention``); inputs are not validated here.

    query [B, Cq, H, W], keys[l] [B, Cq, H_l, W_l], values[l] [B, Cv, H_l, W_l];
    returns [B, Cv, H, W]. Half-precision inputs are computed in float32 and cast back.
    Differentiable by autograd (the norm floor passes no gradient where it is active).
    """
    out_dtype = query.dtype
    if out_dtype in (torch.float16, torch.bfloat16):
        query = query.float()
        keys = [k.float() for k in keys]
        values = [v.float() for v in values]
    r = patch_size // 2
    outputs = []
    for b in range(query.shape[0]):
        key_filters = _level_filters(keys, b, patch_size)  # [n, Cq, k, k]
        # vector_norm has a zero (not NaN) gradient at a zero patch, unlike sqrt(sum(x^2)).
        norms = torch.linalg.vector_norm(key_filters, dim=(1, 2, 3), keepdim=True)
        key_filters = key_filters / norms.clamp_min(key_eps)
        scores = F.conv2d(query[b : b + 1], key_filters, padding=r)  # [1, n, H, W]
        attention = F.softmax(scores * softmax_scale, dim=1)
        value_filters = _level_filters(values, b, patch_size)  # [n, Cv, k, k]
        outputs.append(F.conv_transpose2d(attention, value_filters, padding=r) / fold_divisor)
    return torch.cat(outputs, dim=0).to(out_dtype)
