"""Memory-efficient pyramid attention in plain PyTorch (the CPU path, and a fallback anywhere).

The queries of one image are processed in tiles: for each tile the scores against all keys
of all levels are one matmul, the softmax is taken in place, and a second matmul gathers
the value patches. Only one [tile, keys] score buffer exists at a time, its size chosen
from a memory budget. The backward recomputes each tile's scores from the saved per-query
log-sum-exp (FlashAttention's recipe), so forward and backward peak memory grow like
O(tile x keys + inputs), never O(queries x keys).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from .patches import extract_patches, paste_patches

#: Bytes that the [tile, keys] scratch matrices may take together (forward: one, backward: two).
#: 32 MiB keeps a tile inside a server CPU's last-level cache while the matmuls stay large.
DEFAULT_TILE_BYTES = int(float(os.environ.get("TRI_PANET_TILE_MB", "32")) * 2**20)


def compute_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(matmul dtype, softmax dtype) used for inputs of ``dtype``.

    bfloat16 keeps its fast matmuls (2.5x fp32 on AVX512-BF16 CPUs) with a float32 softmax;
    float16 matmuls are slow on CPUs, so float16 is computed in float32 there.
    """
    if dtype == torch.bfloat16:
        return torch.bfloat16, torch.float32
    if dtype == torch.float16:
        return torch.float32, torch.float32
    return dtype, dtype


def query_tile_size(n_queries: int, n_keys: int, buffers: int, elem_bytes: int, budget: int) -> int:
    """Rows of a query tile so that ``buffers`` [tile, n_keys] matrices fit in ``budget`` bytes."""
    rows = budget // max(1, n_keys * elem_bytes * buffers)
    return int(min(max(rows, 1), n_queries))


def _image_patches(levels: Sequence[torch.Tensor], b: int, patch_size: int, dtype) -> torch.Tensor:
    """Patches of image ``b`` over all levels, level 0 first: [keys, C*k*k]."""
    return torch.cat([extract_patches(x[b : b + 1].to(dtype), patch_size)[0] for x in levels], dim=0)


def _normalise(key_patches: torch.Tensor, key_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(k / max(||k||, eps), ||k||) for each row of ``key_patches``."""
    norms = torch.linalg.vector_norm(key_patches, dim=1, keepdim=True)
    return key_patches / norms.clamp_min(key_eps), norms


def _paste_levels(patches: torch.Tensor, levels: Sequence[torch.Tensor], patch_size: int) -> list[torch.Tensor]:
    """Split key-indexed patch gradients [keys, C*k*k] by level and paste each onto its map."""
    sizes = [x.shape[2] * x.shape[3] for x in levels]
    return [
        paste_patches(chunk[None], tuple(x.shape[2:]), patch_size)[0]
        for chunk, x in zip(torch.split(patches, sizes), levels)
    ]


def tiled_forward(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    patch_size: int,
    softmax_scale: float,
    key_eps: float,
    fold_divisor: float,
    tile_bytes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward pass: returns (out [B, Cv, H, W] in query's dtype, lse [B, H*W] float32/64).

    ``lse`` is the natural-log sum of exp(softmax_scale * <q, k_hat>) over all keys of each
    query: all a backward needs to rebuild the attention weights tile by tile.
    """
    mm_dtype, sm_dtype = compute_dtypes(query.dtype)
    batch, _, height, width = query.shape
    n_queries = height * width
    n_keys = sum(k.shape[2] * k.shape[3] for k in keys)
    tile = query_tile_size(n_queries, n_keys, 1, torch.finfo(sm_dtype).bits // 8, tile_bytes)
    scores = torch.empty(tile, n_keys, dtype=sm_dtype, device=query.device)
    weights = scores if mm_dtype == sm_dtype else torch.empty(tile, n_keys, dtype=mm_dtype, device=query.device)
    lse = torch.empty(batch, n_queries, dtype=sm_dtype, device=query.device)
    outputs = []
    for b in range(batch):
        q = extract_patches(query[b : b + 1].to(mm_dtype), patch_size)[0] * softmax_scale
        k_hat, _ = _normalise(_image_patches(keys, b, patch_size, sm_dtype), key_eps)
        k_hat = k_hat.to(mm_dtype)
        v = _image_patches(values, b, patch_size, mm_dtype)
        out = torch.empty(n_queries, v.shape[1], dtype=sm_dtype, device=query.device)
        for start in range(0, n_queries, tile):
            stop = min(start + tile, n_queries)
            s, w = scores[: stop - start], weights[: stop - start]
            torch.mm(q[start:stop], k_hat.t(), out=w)
            if w is not s:
                s.copy_(w)
            row_max = s.amax(dim=1, keepdim=True)
            s.sub_(row_max).exp_()
            row_sum = s.sum(dim=1, keepdim=True)
            if w is not s:
                w.copy_(s)
            out[start:stop] = (w @ v).to(sm_dtype) / row_sum
            lse[b, start:stop] = (row_max + row_sum.log()).squeeze(1)
        outputs.append(paste_patches(out[None], (height, width), patch_size))
    return (torch.cat(outputs) / fold_divisor).to(query.dtype), lse


def tiled_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    lse: torch.Tensor,
    *,
    patch_size: int,
    softmax_scale: float,
    key_eps: float,
    fold_divisor: float,
    tile_bytes: int,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Backward pass from the saved ``lse`` [B, H*W]: (grad_query, grad_keys, grad_values).

    Recomputes each tile's scores, so no [queries, keys] matrix exists. Any forward that
    saves the same log-sum-exp (the Triton kernel does) can use this as its backward.
    """
    # Gradients are accumulated over all queries: keep them in float32 (or float64).
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    batch, _, height, width = query.shape
    n_queries = height * width
    n_keys = sum(k.shape[2] * k.shape[3] for k in keys)
    tile = query_tile_size(n_queries, n_keys, 2, torch.finfo(dtype).bits // 8, tile_bytes)
    probs = torch.empty(tile, n_keys, dtype=dtype, device=query.device)
    grad_scores = torch.empty_like(probs)
    dot = torch.empty(tile, 1, 1, dtype=dtype, device=query.device)
    grad_query, grad_keys, grad_values = [], [], []
    for b in range(batch):
        q = extract_patches(query[b : b + 1].to(dtype), patch_size)[0] * softmax_scale
        k_hat, norms = _normalise(_image_patches(keys, b, patch_size, dtype), key_eps)
        v = _image_patches(values, b, patch_size, dtype)
        g_out = extract_patches(grad_out[b : b + 1].to(dtype), patch_size)[0] / fold_divisor
        g_q = torch.empty_like(q)
        g_k_hat = torch.zeros_like(k_hat)
        g_v = torch.zeros_like(v)
        lse_b = lse[b].to(dtype)
        for start in range(0, n_queries, tile):
            stop = min(start + tile, n_queries)
            p, ds = probs[: stop - start], grad_scores[: stop - start]
            q_t, g_t = q[start:stop], g_out[start:stop]
            torch.mm(q_t, k_hat.t(), out=p)
            p.sub_(lse_b[start:stop, None]).exp_()
            torch.mm(g_t, v.t(), out=ds)  # dL/dP
            g_v.addmm_(p.t(), g_t)
            # softmax backward: dS = P * (dP - rowsum(P * dP)), without a [tile, keys] temporary
            torch.bmm(p.unsqueeze(1), ds.unsqueeze(2), out=dot[: stop - start])
            ds.sub_(dot[: stop - start, 0]).mul_(p)
            torch.mm(ds, k_hat, out=g_q[start:stop])
            g_k_hat.addmm_(ds.t(), q_t)  # q_t already carries softmax_scale
        g_q.mul_(softmax_scale)
        # Through k_hat = k / max(||k||, eps): the norm passes no gradient where the floor is active.
        radial = (k_hat * g_k_hat).sum(dim=1, keepdim=True) * (norms >= key_eps)
        g_k = (g_k_hat - k_hat * radial) / norms.clamp_min(key_eps)
        grad_query.append(paste_patches(g_q[None], (height, width), patch_size)[0])
        grad_keys.append(_paste_levels(g_k, keys, patch_size))
        grad_values.append(_paste_levels(g_v, values, patch_size))

    def stack_levels(per_image: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [torch.stack([grads[level] for grads in per_image]).to(query.dtype) for level in range(len(keys))]

    return torch.stack(grad_query).to(query.dtype), stack_levels(grad_keys), stack_levels(grad_values)


class _TiledPyramidAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, options, n_levels, *levels):
        out, lse = tiled_forward(query, levels[:n_levels], levels[n_levels:], **options)
        ctx.save_for_backward(query, lse, *levels)
        ctx.options, ctx.n_levels = options, n_levels
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        query, lse, *levels = ctx.saved_tensors
        n = ctx.n_levels
        grad_query, grad_keys, grad_values = tiled_backward(
            grad_out, query, levels[:n], levels[n:], lse, **ctx.options
        )
        return grad_query, None, None, *grad_keys, *grad_values


def pyramid_attention_torch(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    patch_size: int = 3,
    softmax_scale: float = 10.0,
    key_eps: float = 1e-4,
    fold_divisor: float = 4.0,
    tile_bytes: int | None = None,
) -> torch.Tensor:
    """Tiled pyramid attention with recomputing backward; same contract as the reference.

    query [B, Cq, H, W], keys[l] [B, Cq, H_l, W_l], values[l] [B, Cv, H_l, W_l] -> [B, Cv, H, W].
    ``tile_bytes`` bounds the [tile, keys] scratch buffers (default ``DEFAULT_TILE_BYTES``).
    """
    options = dict(
        patch_size=patch_size,
        softmax_scale=softmax_scale,
        key_eps=key_eps,
        fold_divisor=fold_divisor,
        tile_bytes=DEFAULT_TILE_BYTES if tile_bytes is None else int(tile_bytes),
    )
    return _TiledPyramidAttention.apply(query, options, len(keys), *keys, *values)
