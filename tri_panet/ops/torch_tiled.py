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

*Square tiles of queries.* Queries are processed a block of rows x columns at a time:
only the [rows, cols, keys] score tile of the current block exists (sized from a memory
budget), and the backward recomputes each tile from the saved per-query log-sum-exp
(FlashAttention's recipe), so forward and backward peak memory grow like
O(tile x keys + inputs), never O(queries x keys). A tile reads a halo of r = k // 2
pixels around it and pastes into the same halo (neighbouring tiles' outputs overlap and
are accumulated), so the matmuls cost (rows + 2r)(cols + 2r) / (rows cols) times the
halo-free work: near-square tiles keep that small (1.3x for 14 x 14 instead of 3x for a
one-row tile of a 192 px image).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .custom_op import define_op, lse_dtype

#: Bytes the score tiles of one call may take (env TRI_PANET_TILE_MB, read at import; 128 MiB
#: was the fastest of 16-256 MiB at 96 and 128 px on the project's CPU). Override per call
#: with ``tile_bytes=`` or for a block of code with :func:`tile_budget`.
DEFAULT_TILE_BYTES = int(float(os.environ.get("TRI_PANET_TILE_MB", "128")) * 2**20)

# How many [rows, cols, keys]-sized buffers are alive at once; the tile is sized so that this
# many fit the budget. Forward: the score tile, plus two per-level temporaries (the Gram matrix
# and its column sums in _patch_scores, or the two shifted copies in _paste_box_sum), each at
# most one level's share of the keys (all of them for a one-level pyramid, ~30 % of them for
# PANet's five levels; times the halo (rows + 2r)(cols + 2r) / (rows cols)): 1 + 2 = 3.
# Backward: three full tiles (raw scores, probabilities, their gradient) plus the same two
# temporaries, and one more of headroom for the halo: 3 + 2 + 1 = 6.
FORWARD_TILES = 3
BACKWARD_TILES = 6

#: The budget set by :func:`tile_budget` (None: DEFAULT_TILE_BYTES). A module global rather than
#: a context variable, because torch.compile can read (and guard on) a global.
_budget_override: int | None = None


def check_tile_bytes(tile_bytes: object) -> int:
    """Return ``tile_bytes`` if it is a positive int (bytes), else raise naming it."""
    if isinstance(tile_bytes, bool) or not isinstance(tile_bytes, int):
        raise TypeError(f"tile_bytes must be an int (bytes), got {type(tile_bytes).__name__}")
    if tile_bytes <= 0:
        raise ValueError(f"tile_bytes must be > 0, got {tile_bytes}")
    return tile_bytes


@contextlib.contextmanager
def tile_budget(tile_bytes: int) -> Iterator[None]:
    """Within the block, the torch path sizes its score tiles for ``tile_bytes`` bytes (calls that
    pass ``tile_bytes=`` themselves keep theirs). Process-wide while active, not per thread.

    Larger budgets mean fewer, larger tiles: on a GPU, where a tile costs dozens of kernel
    launches, 1 GiB or more is much faster for large images than the CPU-tuned default.
    """
    global _budget_override
    saved, _budget_override = _budget_override, check_tile_bytes(tile_bytes)
    try:
        yield
    finally:
        _budget_override = saved


def current_tile_bytes() -> int:
    """The budget calls without ``tile_bytes=`` use now: :func:`tile_budget`'s, else the default."""
    return DEFAULT_TILE_BYTES if _budget_override is None else _budget_override


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the torch path computes in for inputs of ``dtype`` (half types: float32)."""
    return lse_dtype(dtype)


def query_tile_shape(
    height: int, width: int, n_keys: int, buffers: int, elem_bytes: int, budget: int, min_queries: int = 1
) -> tuple[int, int]:
    """(rows, cols) of a query tile: ``buffers`` [rows, cols, n_keys] tiles fit in ``budget`` bytes.

    As square as the image allows (the halo overhead is smallest for squares) and balanced so
    that the last tile of a row or column is not a sliver. The tile holds at least
    ``min_queries`` queries (the torch path asks for 1), so the budget holds whenever it can
    hold one query's ``buffers * n_keys * elem_bytes`` bytes.
    """
    queries = max(1, min_queries, budget // max(1, n_keys * elem_bytes * buffers))
    cols = min(width, max(1, math.isqrt(queries)))
    rows = min(height, max(1, queries // cols))
    cols = min(width, max(cols, queries // rows))  # a short image leaves room for wider tiles
    return _balanced(height, rows), _balanced(width, cols)


def tile_shape(query: torch.Tensor, n_keys: int, buffers: int, tile_bytes: int) -> tuple[int, int]:
    """(rows, cols) of the query tiles for ``query`` [B, C, H, W] and ``n_keys`` keys: ``buffers``
    [rows, cols, n_keys] tiles of the compute dtype fit ``tile_bytes`` (the same on every device)."""
    elem_bytes = torch.finfo(compute_dtype(query.dtype)).bits // 8
    return query_tile_shape(query.shape[2], query.shape[3], n_keys, buffers, elem_bytes, tile_bytes)


def _balanced(size: int, tile: int) -> int:
    """The smallest tile that covers ``size`` in as many tiles as ``tile`` needs."""
    return -(-size // -(-size // tile))


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
    """Adjoint of :func:`diagonal_box_sum`: the halo-sized window a tile of weights pastes into.

    tile [rows, cols, h, w] (one level's weights for a tile of queries) -> [rows + 2r,
    cols + 2r, h, w] (r = k // 2, window position (r, r) is the tile's first query):
    entry [o, x, p, q] sums tile[o - r + c, x - r + e, p + c, q + e] over c, e in [-r, r],
    dropping key positions outside the level. This pastes value patches (attention output)
    and carries score gradients back to pixels. Clipped slices instead of padding keep the
    passes as small as the data.
    """
    r = k // 2
    rows, cols, height_l, width_l = tile.shape
    shifted_cols = tile.new_zeros(rows, cols + 2 * r, height_l, width_l)
    for e in range(-r, r + 1):
        q_to, q_from = _shift_ranges(width_l, e)
        shifted_cols[:, r - e : r - e + cols, :, q_to] += tile[:, :, :, q_from]
    out = tile.new_zeros(rows + 2 * r, cols + 2 * r, height_l, width_l)
    for c in range(-r, r + 1):
        p_to, p_from = _shift_ranges(height_l, c)
        out[r - c : r - c + rows, :, p_to] += shifted_cols[:, :, p_from]
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


def _inverse_norms(
    keys, b: int, k: int, softmax_scale: float, key_eps: float, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax_scale / max(norm, eps), norm) of all key patches of image ``b``, flat [keys]."""
    norms = torch.cat([_patch_norms(key[b].to(dtype), k).flatten() for key in keys])
    return softmax_scale / norms.clamp_min(key_eps), norms


def norm_gradient_factors(
    grad_inverse_norms: torch.Tensor,
    inverse_norms: torch.Tensor,
    norms: torch.Tensor,
    key_eps: float,
    shapes: Sequence[tuple[int, int]],
    k: int,
) -> list[torch.Tensor]:
    """The key gradient's share through the patch norms, as factors: per level [h, w] maps c with
    grad_key += key * c (c broadcast over channels).

    ``grad_inverse_norms``, ``inverse_norms`` (softmax_scale / max(norm, eps)) and ``norms`` are
    flat over all levels' keys, ``shapes`` the levels' (h, w). Through norm = sqrt(box_sum(|K|^2)),
    the floor passes no gradient where it is active.
    """
    active = norms >= key_eps
    grad_norms = torch.where(active, -grad_inverse_norms * inverse_norms / norms.clamp_min(key_eps), 0)
    coefficient = grad_norms / norms.clamp_min(key_eps)  # d norm / d |K|^2 = 1 / (2 norm), times 2K
    factors = []
    for c, (h, w) in zip(coefficient.split([h * w for h, w in shapes]), shapes):
        factors.append(F.avg_pool2d(c.view(1, 1, h, w), k, 1, k // 2, count_include_pad=True)[0, 0] * (k * k))
    return factors


def _window_pixels(padded: torch.Tensor, y0: int, x0: int, rows: int, cols: int, r: int) -> torch.Tensor:
    """A tile's pixels with their halo from a map padded by r, [C, H + 2r, W + 2r] ->
    [(rows + 2r) * (cols + 2r), C]; window position (r, r) is image position (y0, x0)."""
    window = padded[:, y0 : y0 + rows + 2 * r, x0 : x0 + cols + 2 * r]
    return window.reshape(window.shape[0], -1).t()


def _patch_scores(
    pixels: torch.Tensor, maps: list[torch.Tensor], levels: list[_Level], k: int, out: torch.Tensor
) -> None:
    """Patch inner products of a tile of queries with every patch of every level, into ``out`` [rows, cols, keys].

    ``pixels``: the tile's window from a map padded by r, [(rows + 2r) * (cols + 2r), C];
    ``maps``: each level's padded map [C, (h + 2r) * (w + 2r)]. Serves <query, key> patches
    and, in the backward, <grad_out, value> patches.
    """
    r, rows, cols = k // 2, out.shape[0], out.shape[1]
    for level, padded in zip(levels, maps):
        gram = torch.mm(pixels, padded).view(rows + 2 * r, cols + 2 * r, level.height + 2 * r, level.width + 2 * r)
        diagonal_box_sum(gram, k, out=_level_tile(out, level))


def _pasted_levels(weights: torch.Tensor, levels: list[_Level], k: int):
    """Per level, the tile's ``weights`` [rows, cols, keys] pasted (:func:`_paste_box_sum`) as a
    matrix [(rows + 2r) * (cols + 2r), h * w]: window pixels x the level's key positions."""
    window = (weights.shape[0] + k - 1) * (weights.shape[1] + k - 1)
    for level in levels:
        yield _paste_box_sum(_level_tile(weights, level), k).view(window, -1)


def _add_window(padded: torch.Tensor, y0: int, x0: int, rows: int, cols: int, r: int, pixels: torch.Tensor) -> None:
    """Accumulate window ``pixels`` [(rows + 2r) * (cols + 2r), C] into a channel-last padded map
    [H + 2r, W + 2r, C]."""
    padded[y0 : y0 + rows + 2 * r, x0 : x0 + cols + 2 * r] += pixels.view(rows + 2 * r, cols + 2 * r, -1)


def _tiles(height: int, width: int, rows: int, cols: int):
    """(y0, x0, rows, cols) of the query tiles covering an image, row-major, clipped at its edges."""
    for y0 in range(0, height, rows):
        for x0 in range(0, width, cols):
            yield y0, x0, min(rows, height - y0), min(cols, width - x0)


def _level_tile(tile: torch.Tensor, level: _Level) -> torch.Tensor:
    """The [rows, cols, h, w] view of one level inside a [rows, cols, keys] tile."""
    return tile[:, :, level.keys].view(tile.shape[0], tile.shape[1], level.height, level.width)


def forward(
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
    query: all a backward needs to rebuild the attention weights tile by tile. ``tile_bytes``:
    the budget of the score tiles (see :func:`pyramid_attention_torch`).
    """
    dtype = compute_dtype(query.dtype)
    k, r = patch_size, patch_size // 2
    batch, _, height, width = query.shape
    n_keys = sum(x.shape[2] * x.shape[3] for x in keys)
    rows, cols = tile_shape(query, n_keys, FORWARD_TILES, tile_bytes)
    scores_buffer = query.new_empty(rows * cols * n_keys, dtype=dtype)
    lse = query.new_empty(batch, height, width, dtype=dtype)
    out = query.new_zeros(batch, height + 2 * r, width + 2 * r, values[0].shape[1], dtype=dtype)
    for b in range(batch):
        levels = _prepare_levels(keys, values, b, k, dtype)
        key_maps = [lv.key_padded for lv in levels]
        inverse_norms, _ = _inverse_norms(keys, b, k, softmax_scale, key_eps, dtype)
        query_padded = F.pad(query[b].to(dtype), (r, r, r, r))
        for y0, x0, n_rows, n_cols in _tiles(height, width, rows, cols):
            scores = scores_buffer[: n_rows * n_cols * n_keys].view(n_rows, n_cols, n_keys)
            _patch_scores(_window_pixels(query_padded, y0, x0, n_rows, n_cols, r), key_maps, levels, k, scores)
            scores.mul_(inverse_norms)
            row_max = scores.amax(dim=2, keepdim=True)
            scores.sub_(row_max).exp_()
            row_sum = scores.sum(dim=2, keepdim=True)
            scores.div_(row_sum)
            lse[b, y0 : y0 + n_rows, x0 : x0 + n_cols] = (row_max + row_sum.log()).squeeze(2)
            pasted_values = scores.new_zeros((n_rows + 2 * r) * (n_cols + 2 * r), out.shape[-1])
            for level, pasted in zip(levels, _pasted_levels(scores, levels, k)):
                pasted_values.addmm_(pasted, level.value_pixels)
            _add_window(out[b], y0, x0, n_rows, n_cols, r, pasted_values)
    result = out[:, r : r + height, r : r + width].permute(0, 3, 1, 2) / fold_divisor
    return result.to(query.dtype).contiguous(), lse.view(batch, -1)


def backward(
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
    rows, cols = tile_shape(query, n_keys, BACKWARD_TILES, tile_bytes)
    raw_buffer = query.new_empty(rows * cols * n_keys, dtype=dtype)
    probs_buffer = torch.empty_like(raw_buffer)
    grad_buffer = torch.empty_like(raw_buffer)
    grad_query = query.new_zeros(batch, height + 2 * r, width + 2 * r, query.shape[1], dtype=dtype)
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
        for y0, x0, n_rows, n_cols in _tiles(height, width, rows, cols):
            n = n_rows * n_cols * n_keys
            raw, probs, grad = (x[:n].view(n_rows, n_cols, n_keys) for x in (raw_buffer, probs_buffer, grad_buffer))
            query_pixels = _window_pixels(query_padded, y0, x0, n_rows, n_cols, r)
            grad_pixels = _window_pixels(grad_padded, y0, x0, n_rows, n_cols, r)
            _patch_scores(query_pixels, key_maps, levels, k, raw)
            torch.mul(raw, inverse_norms, out=probs).sub_(lse[b, y0 : y0 + n_rows, x0 : x0 + n_cols]).exp_()
            # grad of the attention weights: <grad_out patch, value patch>
            _patch_scores(grad_pixels, value_maps, levels, k, grad)
            for pasted, g_v in zip(_pasted_levels(probs, levels, k), grad_value_pixels):
                g_v.addmm_(pasted.t(), grad_pixels)
            # softmax backward: dS = P * (dP - rowsum(P * dP))
            dot = torch.bmm(probs.view(-1, 1, n_keys), grad.view(-1, n_keys, 1)).view(n_rows, n_cols, 1)
            grad.sub_(dot).mul_(probs)
            grad_inverse_norms += raw.mul_(grad).sum(dim=(0, 1))
            grad.mul_(inverse_norms)  # now the gradient of the raw patch inner products
            pasted_keys = grad.new_zeros(query_pixels.shape)
            for level, pasted, g_k in zip(levels, _pasted_levels(grad, levels, k), grad_key_pixels):
                pasted_keys.addmm_(pasted, level.key_pixels)
                g_k.addmm_(pasted.t(), query_pixels)
            _add_window(grad_query[b], y0, x0, n_rows, n_cols, r, pasted_keys)
        shapes = [(level.height, level.width) for level in levels]
        windows = norm_gradient_factors(grad_inverse_norms, inverse_norms, norms, key_eps, shapes, k)
        for key, window, g_k, g_v, out_k, out_v in zip(
            keys, windows, grad_key_pixels, grad_value_pixels, grad_keys, grad_values
        ):
            out_k[b] = g_k.t().view_as(out_k[b]) + key[b].to(dtype) * window
            out_v[b] = g_v.t().view_as(out_v[b])
    grad_query = grad_query[:, r : r + height, r : r + width].permute(0, 3, 1, 2).to(query.dtype).contiguous()
    return (
        grad_query,
        [g.to(x.dtype) for g, x in zip(grad_keys, keys)],
        [g.to(x.dtype) for g, x in zip(grad_values, values)],
    )


#: tri_panet::torch_pyramid_attention_forward / _backward
_OP = define_op("torch", forward, backward, options=[("tile_bytes", int)])


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
    Deterministic on every device (no atomics): the same inputs give the same bits.

    ``tile_bytes`` (default: :func:`tile_budget`'s, else ``DEFAULT_TILE_BYTES`` = 128 MiB) bounds
    the score tiles, on every device alike: the query tile is sized so that 3 (forward) or 6
    (backward) [rows, cols, keys] buffers of the compute dtype (float32; float64 for float64)
    fit. Where the bound is not exact: a tile holds at least one query, so a budget below one
    query's 3 or 6 x keys x 4 (8) bytes is exceeded; the two per-level temporaries are counted
    as one tile each, while they are the largest level's share of the keys times the halo
    factor (rows + 2r)(cols + 2r) / (rows cols): less for PANet's five levels (30 % of the keys
    in the largest) from 3 x 3 tiles up, up to 1.3x more for a single level with 14 x 14
    tiles. Memory proportional to the inputs (padded copies, output, gradients) comes on top.
    """
    tile_bytes = current_tile_bytes() if tile_bytes is None else check_tile_bytes(tile_bytes)
    return _OP(
        query,
        keys,
        values,
        patch_size=patch_size,
        softmax_scale=softmax_scale,
        key_eps=key_eps,
        fold_divisor=fold_divisor,
        tile_bytes=tile_bytes,
    )
