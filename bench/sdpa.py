"""The PyTorch alternative the benchmarks compare with: unfold + scaled_dot_product_attention + fold.

Patches are formed the way every backend of the op defines them: a k x k window around each
position of a map zero-padded by r = k // 2, flattened channel-major (c, dy, dx) exactly like
``torch.nn.functional.unfold``; pasting is the adjoint (``fold``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def extract_patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """All k x k patches of ``x`` [B, C, H, W], zero-padded: returns [B, H*W, C*k*k]."""
    cols = F.unfold(x, patch_size, padding=patch_size // 2)
    return cols.transpose(1, 2)


def paste_patches(patches: torch.Tensor, size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Overlap-add patches [B, H*W, C*k*k] back onto a [B, C, H, W] map (col2im).

    Contributions that fall into the padding border are dropped; this is the adjoint
    of :func:`extract_patches`.
    """
    return F.fold(patches.transpose(1, 2), size, patch_size, padding=patch_size // 2)


def pyramid_attention_sdpa(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    patch_size: int = 3,
    softmax_scale: float = 10.0,
    key_eps: float = 1e-4,
    fold_divisor: float = 4.0,
    pad_qk: bool = False,
) -> torch.Tensor:
    """Pyramid attention the way a PyTorch user would write it with SDPA (same contract as
    the reference): unfold patches, normalise key patches, one
    ``F.scaled_dot_product_attention`` over the concatenated keys of all levels, fold and
    divide. query [B, Cq, H, W], keys[l] [B, Cq, H_l, W_l], values[l] [B, Cv, H_l, W_l]
    -> [B, Cv, H, W].

    ``pad_qk=True`` zero-pads query and key patches to the value width: dot products are
    unchanged, but SDPA kernels that need equal widths (the CPU flash kernel) can then run
    instead of the math fallback, which materialises the [queries, keys] scores.
    """
    height, width = query.shape[2:]
    q = extract_patches(query, patch_size)  # [B, H*W, Cq*k*k]
    k = torch.cat([extract_patches(x, patch_size) for x in keys], dim=1)  # [B, keys, Cq*k*k]
    v = torch.cat([extract_patches(x, patch_size) for x in values], dim=1)  # [B, keys, Cv*k*k]
    k = k / torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(key_eps)
    if pad_qk and v.shape[-1] > q.shape[-1]:
        q = F.pad(q, (0, v.shape[-1] - q.shape[-1]))
        k = F.pad(k, (0, v.shape[-1] - k.shape[-1]))
    # One head per image: [B, 1, tokens, width].
    out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=softmax_scale)[:, 0]
    return paste_patches(out, (height, width), patch_size) / fold_divisor


def sdpa_kernel_name(d_qk: int, d_v: int, dtype: torch.dtype, device: str, backward: bool) -> str:
    """Which SDPA kernel torch dispatches to for query/key width ``d_qk`` and value width ``d_v``
    (e.g. "math", "flash_attention", "efficient_attention"), asked of torch's own selector on
    tiny tensors of those widths; "unknown" where this torch has no such selector."""
    n_q, n_k = 64, 80
    q = torch.zeros(1, 1, n_q, d_qk, dtype=dtype, device=device, requires_grad=backward)
    k = torch.zeros(1, 1, n_k, d_qk, dtype=dtype, device=device, requires_grad=backward)
    v = torch.zeros(1, 1, n_k, d_v, dtype=dtype, device=device, requires_grad=backward)
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend(torch._fused_sdp_choice(q, k, v, scale=10.0)).name.lower()
    except Exception:  # private API: absent or changed in other torch versions
        return "unknown"
