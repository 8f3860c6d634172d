"""Memory-efficient pyramid attention in plain PyTorch (the CPU path, and a fallback anywhere).

Two ideas make it fast and lean.

*Patch scores from pixel scores.* A k x k patch inner product is the sum of k*k pixel
(channel) inner products at equally shifted positions:

    <q_patch(q), k_patch(j)> = sum_{a,b} G[q + (a, b), j + (a, b)],   G = Q~^T K~

(~: zero padded). So instead of a [queries, Cq*k*k] x [Cq*k*k, keys] matmul we form the
pixel Gram matrix G (Cq deep, k*k times cheaper) and sum it along k*k "diagonals"
(:func:`diagonal_box_sum`). Pasting value patches back is the adjoint of the same
diagonal sum followed by a Cv-deep matmul. For PANet (k = 3) that replaces 1728 FLOPs per
(query, key) pair by 192 matmul FLOPs and a few cheap passes.

*Tiles of query rows.* Queries are processed a few image rows at a time: only the
[rows, W, keys] score tile of the current rows exists (sized from a memory budget), and the
backward recomputes each tile from the saved per-query log-sum-exp (FlashAttention's
recipe), so forward and backward peak memory grow like O(tile x keys + inputs), never
O(queries x keys). A tile reads k - 1 halo rows of queries around it, and its pasted output
spills k - 1 rows into its neighbours' (they are accumulated).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .library import pyramid_attention_op, register_implementation

#: Bytes that the [rows, W, keys] scratch tiles may take together. Each tile recomputes
#: k - 1 halo rows, so a few rows per tile pay off: at 96 x 96 (PANet config, one thread of
#: a 2-core EPYC) 128 MiB (3 rows) ran in 2.33 s of CPU time, 24 MiB (1 row) in 3.07 s.
DEFAULT_TILE_BYTES = int(float(os.environ.get("TRI_PANET_TILE_MB", "128")) * 2**20)

# Scratch tiles alive at once, counting the per-level temporaries: forward, backward.
_FORWARD_TILES = 3
_BACKWARD_TILES = 6


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the torch backend computes in for inputs of ``dtype`` (half types: float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def query_tile_rows(height: int, width: int, n_keys: int, buffers: int, elem_bytes: int, budget: int) -> int:
    """Image rows per query tile so that ``buffers`` [rows, width, n_keys] tiles fit in ``budget`` bytes."""
    rows = budget // max(1, width * n_keys * elem_bytes * buffers)
    return int(min(max(rows, 1), height))


def diagonal_box_sum(x: torch.Tensor, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[i, j, m, n] = sum_{a, b < k} x[i + a, j + b, m + a, n + b]  (valid region).

    x [I, J, M, N] -> [I - k + 1, J - k + 1, M - k + 1, N - k + 1]. Summed separably
    (columns, then rows), writing straight into ``out`` when given.
    """
    n0, n1, n2, n3 = (s - k + 1 for s in x.shape)
    if out is None:
        out = x.new_empty(n0, n1, n2, n3)
    if k == 1:
        return out.copy_(x)
    cols = torch.add(x[:, 0:n1, :, 0:n3], x[:, 1 : 1 + n1, :, 1 : 1 + n3])
    for b in range(2, k):
        cols.add_(x[:, b : b + n1, :, b : b + n3])
    torch.add(cols[0:n0, :, 0:n2], cols[1 : 1 + n0, :, 1 : 1 + n2], out=out)
    for a in range(2, k):
        out.add_(cols[a : a + n0, :, a : a + n2])
    return out


def _shift_ranges(size: int, shift: int) -> tuple[slice, slice]:
    """(target, source) slices of an axis of ``size`` such that target[i] pairs with source[i + shift]."""
    return slice(max(0, -shift), min(size, size - shift)), slice(max(0, shift), min(size, size + shift))


def _paste_box_sum(tile: torch.Tensor, k: int) -> torch.Tensor:
    """Adjoint of :func:`diagonal_box_sum`, restricted to image positions.

    tile [rows, W, h, w] (one level's weights for a tile of query rows) -> [rows + k - 1, W, h, w]:
    entry [o, x, p, q] sums tile[o - r + c, x + e, p + c, q + e] over c, e in [-r, r] with
    out-of-range terms dropped; output rows start r rows above the tile. This pastes value
    patches (attention output) and carries score gradients back to pixels. Clipped slices
    instead of padding keep the passes as small as the data.
    """
    r = k // 2
    rows, width, height_l, width_l = tile.shape
    cols = tile.clone()
    for e in range(-r, r + 1):
        if e:
            (x_to, x_from), (q_to, q_from) = _shift_ranges(width, e), _shift_ranges(width_l, e)
            cols[:, x_to, :, q_to] += tile[:, x_from, :, q_from]
    out = tile.new_zeros(rows + 2 * r, width, height_l, width_l)
    for c in range(-r, r + 1):
        p_to, p_from = _shift_ranges(height_l, c)
        out[r - c : r - c + rows, :, p_to] += cols[:, :, p_from]
    return out


def _patch_norms(key: torch.Tensor, k: int) -> torch.Tensor:
    """L2 norm of every zero-padded k x k patch of ``key`` [C, h, w] -> [h, w]."""
    sq = key.square().sum(0)[None, None]
    return F.avg_pool2d(sq, k, 1, k // 2, count_include_pad=True)[0, 0].mul(k * k).clamp_min(0).sqrt()


@dataclass
class _Level:
    """One pyramid level of one image, laid out for the tile loop."""

    height: int
    width: int
    offset: int  # first key index of this level
    key_padded: torch.Tensor  # [C, (h + 2r) * (w + 2r)]
    key_pixels: torch.Tensor  # [h * w, C]
    value_padded: torch.Tensor  # [Cv, (h + 2r) * (w + 2r)]
    value_pixels: torch.Tensor  # [h * w, Cv]

    @property
    def keys(self) -> slice:
        return slice(self.offset, self.offset + self.height * self.width)


def _prepare_levels(keys, values, b: int, k: int, dtype: torch.dtype) -> list[_Level]:
    r = k // 2
    levels, offset = [], 0
    for key, value in zip(keys, values):
        key, value = key[b].to(dtype), value[b].to(dtype)
        h, w = key.shape[1:]
        levels.append(
            _Level(
                h, w, offset,
                F.pad(key, (r, r, r, r)).reshape(key.shape[0], -1),
                key.reshape(key.shape[0], -1).t(),
                F.pad(value, (r, r, r, r)).reshape(value.shape[0], -1),
                value.reshape(value.shape[0], -1).t(),
            )
        )  # fmt: skip
        offset += h * w
    return levels


def _inverse_norms(keys, b: int, k: int, softmax_scale: float, key_eps: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax_scale / max(norm, eps), norm) of all key patches of image ``b``, flat [keys]."""
    norms = torch.cat([_patch_norms(key[b].to(dtype), k).flatten() for key in keys])
    return softmax_scale / norms.clamp_min(key_eps), norms


def _pixel_rows(padded: torch.Tensor, y0: int, rows: int, r: int, interior: bool) -> torch.Tensor:
    """Rows y0 - r .. y0 + rows + r of a map padded by r, as pixels [(rows + 2r) * W', C].

    ``interior`` keeps the image columns only (W' = W), otherwise the padded ones (W + 2r).
    """
    band = padded[:, y0 : y0 + rows + 2 * r]
    if interior:
        band = band[:, :, r : band.shape[2] - r]
    return band.reshape(band.shape[0], -1).t()


def _patch_scores(pixels: torch.Tensor, maps: list[torch.Tensor], levels: list[_Level], width: int, k: int,
                  out: torch.Tensor) -> None:
    """Patch inner products of a tile of rows with every patch of every level, into ``out`` [rows, W, keys].

    ``pixels``: the tile's rows with halo from a map padded by r, [(rows + 2r) * (W + 2r), C];
    ``maps``: each level's padded map [C, (h + 2r) * (w + 2r)]. Serves <query, key> patches
    and, in the backward, <grad_out, value> patches.
    """
    r, rows = k // 2, out.shape[0]
    for level, padded in zip(levels, maps):
        gram = torch.mm(pixels, padded).view(rows + 2 * r, width + 2 * r, level.height + 2 * r, level.width + 2 * r)
        diagonal_box_sum(gram, k, out=_level_tile(out, level))


def _level_tile(tile: torch.Tensor, level: _Level) -> torch.Tensor:
    """The [rows, W, h, w] view of one level inside a [rows, W, keys] tile."""
    return tile[:, :, level.keys].view(tile.shape[0], tile.shape[1], level.height, level.width)


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
    dtype = compute_dtype(query.dtype)
    k, r = patch_size, patch_size // 2
    batch, _, height, width = query.shape
    n_keys = sum(x.shape[2] * x.shape[3] for x in keys)
    rows = query_tile_rows(height, width, n_keys, _FORWARD_TILES, torch.finfo(dtype).bits // 8, tile_bytes)
    scores_buffer = query.new_empty(rows, width, n_keys, dtype=dtype)
    lse = query.new_empty(batch, height, width, dtype=dtype)
    out = query.new_zeros(batch, height + 2 * r, width, values[0].shape[1], dtype=dtype)
    for b in range(batch):
        levels = _prepare_levels(keys, values, b, k, dtype)
        key_maps = [lv.key_padded for lv in levels]
        inverse_norms, _ = _inverse_norms(keys, b, k, softmax_scale, key_eps, dtype)
        query_padded = F.pad(query[b].to(dtype), (r, r, r, r))
        for y0 in range(0, height, rows):
            n = min(rows, height - y0)
            scores = scores_buffer[:n]
            _patch_scores(_pixel_rows(query_padded, y0, n, r, interior=False), key_maps, levels, width, k, scores)
            scores.mul_(inverse_norms)
            row_max = scores.amax(dim=2, keepdim=True)
            scores.sub_(row_max).exp_()
            row_sum = scores.sum(dim=2, keepdim=True)
            scores.div_(row_sum)
            lse[b, y0 : y0 + n] = (row_max + row_sum.log()).squeeze(2)
            band = out[b, y0 : y0 + n + 2 * r].view(-1, out.shape[-1])
            for level in levels:
                pasted = _paste_box_sum(_level_tile(scores, level), k)
                band.addmm_(pasted.view(-1, level.height * level.width), level.value_pixels)
    result = out[:, r : r + height].permute(0, 3, 1, 2) / fold_divisor
    return result.to(query.dtype).contiguous(), lse.view(batch, -1)


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
    dtype = compute_dtype(query.dtype)
    k, r = patch_size, patch_size // 2
    batch, _, height, width = query.shape
    n_keys = sum(x.shape[2] * x.shape[3] for x in keys)
    rows = query_tile_rows(height, width, n_keys, _BACKWARD_TILES, torch.finfo(dtype).bits // 8, tile_bytes)
    raw_buffer = query.new_empty(rows, width, n_keys, dtype=dtype)
    probs_buffer = torch.empty_like(raw_buffer)
    grad_buffer = torch.empty_like(raw_buffer)
    grad_query = query.new_zeros(batch, height + 2 * r, width, query.shape[1], dtype=dtype)
    grad_keys = [torch.zeros_like(x, dtype=dtype) for x in keys]
    grad_values = [torch.zeros_like(x, dtype=dtype) for x in values]
    lse = lse.view(batch, height, width, 1).to(dtype)
    for b in range(batch):
        levels = _prepare_levels(keys, values, b, k, dtype)
        key_maps, value_maps = [lv.key_padded for lv in levels], [lv.value_padded for lv in levels]
        inverse_norms, norms = _inverse_norms(keys, b, k, softmax_scale, key_eps, dtype)
        query_padded = F.pad(query[b].to(dtype), (r, r, r, r))
        grad_padded = F.pad(grad_out[b].to(dtype) / fold_divisor, (r, r, r, r))
        grad_inverse_norms = torch.zeros_like(inverse_norms)
        grad_key_pixels = [torch.zeros_like(lv.key_pixels) for lv in levels]
        grad_value_pixels = [torch.zeros_like(lv.value_pixels) for lv in levels]
        for y0 in range(0, height, rows):
            n = min(rows, height - y0)
            raw, probs, grad = raw_buffer[:n], probs_buffer[:n], grad_buffer[:n]
            _patch_scores(_pixel_rows(query_padded, y0, n, r, interior=False), key_maps, levels, width, k, raw)
            torch.mul(raw, inverse_norms, out=probs).sub_(lse[b, y0 : y0 + n]).exp_()
            # grad of the attention weights: <grad_out patch, value patch>
            _patch_scores(_pixel_rows(grad_padded, y0, n, r, interior=False), value_maps, levels, width, k, grad)
            query_rows = _pixel_rows(query_padded, y0, n, r, interior=True)
            grad_rows = _pixel_rows(grad_padded, y0, n, r, interior=True)
            for level, g_v in zip(levels, grad_value_pixels):
                pasted = _paste_box_sum(_level_tile(probs, level), k).view(-1, level.height * level.width)
                g_v.addmm_(pasted.t(), grad_rows)
            # softmax backward: dS = P * (dP - rowsum(P * dP))
            dot = torch.bmm(probs.view(-1, 1, n_keys), grad.view(-1, n_keys, 1)).view(n, width, 1)
            grad.sub_(dot).mul_(probs)
            grad_inverse_norms += raw.mul_(grad).sum(dim=(0, 1))
            grad.mul_(inverse_norms)  # now the gradient of the raw patch inner products
            band = grad_query[b, y0 : y0 + n + 2 * r].view(-1, query.shape[1])
            for level, g_k in zip(levels, grad_key_pixels):
                pasted = _paste_box_sum(_level_tile(grad, level), k).view(-1, level.height * level.width)
                band.addmm_(pasted, level.key_pixels)
                g_k.addmm_(pasted.t(), query_rows)
        # Through inverse_norm = scale / max(norm, eps), norm = sqrt(box_sum(|K|^2)): the
        # floor passes no gradient where it is active.
        active = norms >= key_eps
        grad_norms = torch.where(active, -grad_inverse_norms * inverse_norms / norms.clamp_min(key_eps), 0)
        coefficient = grad_norms / norms.clamp_min(key_eps)  # d norm / d |K|^2 = 1 / (2 norm), times 2K below
        for level, key, g_k, g_v, out_k, out_v in zip(
            levels, keys, grad_key_pixels, grad_value_pixels, grad_keys, grad_values
        ):
            c = coefficient[level.keys].view(1, 1, level.height, level.width)
            window = F.avg_pool2d(c, k, 1, r, count_include_pad=True)[0, 0] * (k * k)
            out_k[b] = g_k.t().view_as(out_k[b]) + key[b].to(dtype) * window
            out_v[b] = g_v.t().view_as(out_v[b])
    grad_query = grad_query[:, r : r + height].permute(0, 3, 1, 2).to(query.dtype).contiguous()
    return (
        grad_query,
        [g.to(x.dtype) for g, x in zip(grad_keys, keys)],
        [g.to(x.dtype) for g, x in zip(grad_values, values)],
    )


register_implementation("torch", tiled_forward, tiled_backward)


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
    ``tile_bytes`` bounds the score tiles (default ``DEFAULT_TILE_BYTES``); at least one
    image row of queries is processed at a time whatever the budget.
    """
    return pyramid_attention_op(
        query,
        keys,
        values,
        patch_size=patch_size,
        softmax_scale=softmax_scale,
        key_eps=key_eps,
        fold_divisor=fold_divisor,
        tile_bytes=DEFAULT_TILE_BYTES if tile_bytes is None else int(tile_bytes),
        implementation="torch",
    )
