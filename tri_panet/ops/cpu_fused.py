"""The ``"cpu_fused"`` backend: pyramid attention fused and key-chunked in C, for CPU tensors.

Same contract as the torch path (``torch_tiled``), exact to it in float64 (within 1e-12 in the
tests), about 2x faster on the project's 2-core machines at the tiny models' configuration
(``bench/experiments/fused_cpu/README.md``). Per query tile and per chunk of key rows of a
level, the kernel (``kernels/cpu_pyramid.c``) forms the Gram block, the 3 x 3 patch scores, an
online softmax, the paste and the value product on buffers that stay in L2; the backward
recomputes the scores from the saved log-sum-exp. Memory: per thread, one (forward) or two
(backward) [tile queries, key slots] buffers, the tile sized to the torch path's budget.

The kernel is compiled at first use (``cpu_build``); 3 x 3 patches only; float32 and float64
(half types compute in float32). Channel counts are padded to multiples of 16 with zeros (which
change no score, norm or output). Threads: ``torch.get_num_threads()`` bands of query rows run
at once (ctypes releases the GIL during a kernel call); each band has its own key and value
gradients, summed after, so the result does not depend on the thread count beyond rounding.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
import torch.nn.functional as F

from .._checks import check_positive_int
from . import cpu_build
from .custom_op import define_op
from .torch_tiled import (
    _inverse_norms,
    check_tile_bytes,
    compute_dtype,
    current_tile_bytes,
    norm_gradient_factors,
)

#: Channel counts are padded to a multiple of this (the longest vector: 16 floats).
CHANNEL_MULTIPLE = 16
#: Zero key columns after the last level: the Gram blocks read up to 2 vectors (32 floats) past it.
TAIL_COLUMNS = 32
#: Largest square query tile, and key rows per chunk (the best figures on Intel and AMD machines).
DEFAULT_TILE = 16
DEFAULT_CHUNK_ROWS = 16
#: Score buffers of one [tile queries, key slots] per thread: one forward, two backward.
BUFFERS = 2


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


class _Layout(ctypes.Structure):
    """cpu_common.h's tile_layout (C ``long`` is 64 bits where the backend is offered)."""

    _fields_ = [
        ("R", ctypes.c_int),
        ("C", ctypes.c_int),
        ("n_levels", ctypes.c_int),
        ("n_cols", ctypes.c_long),
        ("n_slots", ctypes.c_long),
        ("w", ctypes.c_void_p),
        ("n_level_slots", ctypes.c_void_p),
        ("pad_off", ctypes.c_void_p),
        ("slot_off", ctypes.c_void_p),
    ]


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    # The tensor must stay bound to a name until the call returns: a temporary's memory is freed.
    assert t.is_contiguous()
    return ctypes.c_void_p(t.data_ptr())


class _Pyramid:
    """One image's key and value levels in the kernel's layout (cpu_common.h): every level zero
    padded by 1 and flattened side by side, then TAIL_COLUMNS zero columns; key slots (each level's
    rows with their two pad columns) with their score scale and bias (-1e30 off the keys)."""

    def __init__(self, keys, values, b: int, dtype, softmax_scale: float, key_eps: float, cq: int, cv: int):
        self.shapes = [tuple(k.shape[2:]) for k in keys]
        padded = [(h + 2) * (w + 2) for h, w in self.shapes]
        slots = [h * (w + 2) for h, w in self.shapes]
        self._meta = [
            torch.tensor(x, dtype=torch.long)
            for x in ([w for _, w in self.shapes], slots, [0, *itertools.accumulate(padded)][:-1],
                      [0, *itertools.accumulate(slots)][:-1])
        ]  # fmt: skip
        self.pad_offsets = self._meta[2].tolist()
        self.n_cols, self.n_slots = sum(padded) + 2 + TAIL_COLUMNS, sum(slots)
        self.keys = self._side_by_side(keys, b, dtype, cq)  # [cq, n_cols]
        self.values = self._side_by_side(values, b, dtype, cv)  # [cv, n_cols]
        self.inverse_norms, self.norms = _inverse_norms(keys, b, 3, softmax_scale, key_eps, dtype)
        self.scale = self.to_slots(self.inverse_norms, 0.0)
        self.bias = self.to_slots(torch.zeros_like(self.inverse_norms), -1e30)

    def _side_by_side(self, maps, b: int, dtype, channels: int) -> torch.Tensor:
        flat = [F.pad(m[b].to(dtype), (1, 1, 1, 1)).flatten(1) for m in maps]
        out = torch.cat(flat, 1)
        return F.pad(out, (0, self.n_cols - out.shape[1], 0, channels - out.shape[0])).contiguous()

    def to_slots(self, per_key: torch.Tensor, fill: float) -> torch.Tensor:
        """[keys] (levels in order) -> [n_slots], the pad slots set to ``fill``."""
        parts = per_key.split([h * w for h, w in self.shapes])
        return torch.cat([F.pad(x.view(h, w), (0, 2), value=fill).flatten() for x, (h, w) in zip(parts, self.shapes)])

    def from_slots(self, x: torch.Tensor) -> torch.Tensor:
        """[n_slots] -> [keys] (the keys only, levels in order)."""
        parts = x.split([h * (w + 2) for h, w in self.shapes])
        return torch.cat([p.view(h, w + 2)[:, :w].flatten() for p, (h, w) in zip(parts, self.shapes)])

    def level_maps(self, columns: torch.Tensor, channels: int) -> list[torch.Tensor]:
        """[n_cols, C] in this layout -> per level [channels, h, w] (unpadded, first ``channels``)."""
        maps = []
        for offset, (h, w) in zip(self.pad_offsets, self.shapes):
            level = columns[offset : offset + (h + 2) * (w + 2)].t().reshape(-1, h + 2, w + 2)
            maps.append(level[:channels, 1 : h + 1, 1 : w + 1])
        return maps

    def layout(self, tile: int) -> _Layout:
        return _Layout(tile, tile, len(self.shapes), self.n_cols, self.n_slots, *(m.data_ptr() for m in self._meta))


def _channel_last(x: torch.Tensor, dtype, channels: int) -> torch.Tensor:
    """[C, H, W] -> zero padded by 1 and to ``channels``, channel-last [H + 2, W + 2, channels]."""
    return F.pad(F.pad(x.to(dtype), (1, 1, 1, 1)).permute(1, 2, 0), (0, channels - x.shape[0])).contiguous()


def _row_bands(height: int, threads: int) -> list[tuple[int, int]]:
    """Query rows [start, stop) per thread, as even as they split (each band is tiled on its own)."""
    cuts = [round(i * height / threads) for i in range(threads + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if a < b]


def _in_bands(height: int, band_fn) -> list:
    """``band_fn(start, stop)`` for each of ``torch.get_num_threads()`` bands of query rows, at once."""
    bands = _row_bands(height, max(1, torch.get_num_threads()))
    if len(bands) == 1:
        return [band_fn(*bands[0])]
    with ThreadPoolExecutor(len(bands)) as pool:
        return list(pool.map(lambda band: band_fn(*band), bands))


def _tile_side(n_slots: int, dtype, tile: int, tile_bytes: int) -> int:
    """The square query tile: at most ``tile``, its BUFFERS score buffers of every thread within ``tile_bytes``."""
    per_thread = tile_bytes // max(1, torch.get_num_threads())
    fitting = math.isqrt(per_thread // (BUFFERS * dtype.itemsize * n_slots))
    return max(1, min(tile, fitting))


def _call(fn, *args) -> None:
    if fn(*args) != 0:
        raise MemoryError("cpu_fused: the kernel could not allocate its work buffers (try a smaller tile_bytes)")


def _kernel(dtype, cq: int, cv: int, name: str):
    flags = tuple(shlex.split(os.environ.get("TRI_PANET_CPU_CFLAGS", "")))
    return getattr(cpu_build.load(dtype, cq, cv, flags), name + cpu_build.REALS[dtype][1])


def _prepare(query, values, patch_size: int, entry: str):
    """(compute dtype, (Cq, Cv), the padded (Cq, Cv), the kernel's ``entry`` point) of one call."""
    _check(query, patch_size)
    dtype = compute_dtype(query.dtype)
    channels = (query.shape[1], values[0].shape[1])
    padded = tuple(_round_up(c, CHANNEL_MULTIPLE) for c in channels)
    return dtype, channels, padded, _kernel(dtype, *padded, entry)


def _check(query: torch.Tensor, patch_size: int) -> None:
    if query.device.type != "cpu":
        raise ValueError(f"backend='cpu_fused' runs on CPU tensors, got query on {query.device}")
    if patch_size != 3:
        raise ValueError(f"backend='cpu_fused' supports patch_size=3 only, got {patch_size} (use backend='torch')")


def _forward_band(kernel, pyramid, layout, side, chunk_rows, query_padded, values_t, lse_b, start, stop):
    """The forward kernel on query rows [start, stop) of one image: (start, stop, the band's padded output
    rows start .. stop + 1, which overlap the next band's); ``lse_b``'s rows are filled in place."""
    q_band, lse_band = query_padded[start : stop + 2], lse_b[start:stop]
    out_band = query_padded.new_zeros(stop - start + 2, query_padded.shape[1], values_t.shape[1])
    _call(kernel, ctypes.byref(layout), stop - start, query_padded.shape[1] - 2, side, side, chunk_rows, _ptr(q_band),
          _ptr(pyramid.keys), _ptr(values_t), _ptr(pyramid.scale), _ptr(pyramid.bias), _ptr(out_band),
          _ptr(lse_band))  # fmt: skip
    return start, stop, out_band


def _backward_band(kernel, pyramid, layout, side, chunk_rows, query_padded, grad_padded, maps, lse_b, start, stop):
    """The backward kernel on query rows [start, stop) of one image: (start, stop, the band's padded query
    gradient rows start .. stop + 1, and its share of the per-slot scale, key and value gradients);
    ``maps`` = (keys [cq, n_cols], keys_t [n_cols, cq], values [cv, n_cols])."""
    keys, keys_t, values = maps
    q_band, g_band, lse_band = query_padded[start : stop + 2], grad_padded[start : stop + 2], lse_b[start:stop]
    grad_scale = query_padded.new_zeros(pyramid.n_slots)
    grad_key_cols = query_padded.new_zeros(pyramid.n_cols, keys.shape[0])
    grad_value_cols = query_padded.new_zeros(pyramid.n_cols, values.shape[0])
    grad_query_band = torch.zeros_like(q_band)
    _call(kernel, ctypes.byref(layout), stop - start, query_padded.shape[1] - 2, side, side, chunk_rows, _ptr(q_band),
          _ptr(g_band), _ptr(keys), _ptr(keys_t), _ptr(values), _ptr(pyramid.scale), _ptr(pyramid.bias),
          _ptr(lse_band), _ptr(grad_query_band), _ptr(grad_key_cols), _ptr(grad_value_cols),
          _ptr(grad_scale))  # fmt: skip
    return start, stop, grad_query_band, grad_scale, grad_key_cols, grad_value_cols


def forward(
    query, keys, values, *, patch_size, softmax_scale, key_eps, fold_divisor, tile, chunk_rows, tile_bytes
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Cv, H, W] in query's dtype, lse [B, H*W] float32 / float64), as ``torch_tiled.forward``."""
    dtype, (cq_in, cv_in), (cq, cv), kernel = _prepare(query, values, patch_size, "image_forward")
    batch, _, height, width = query.shape
    out = torch.zeros(batch, height + 2, width + 2, cv, dtype=dtype)
    lse = torch.empty(batch, height, width, dtype=dtype)
    for b in range(batch):
        pyramid = _Pyramid(keys, values, b, dtype, softmax_scale, key_eps, cq, cv)
        side = _tile_side(pyramid.n_slots, dtype, tile, tile_bytes)
        query_padded, values_t = _channel_last(query[b], dtype, cq), pyramid.values.t().contiguous()
        band = partial(_forward_band, kernel, pyramid, pyramid.layout(side), side, chunk_rows, query_padded, values_t,
                       lse[b])  # fmt: skip
        for start, stop, out_band in _in_bands(height, band):
            out[b, start : stop + 2] += out_band
    result = out[:, 1 : height + 1, 1 : width + 1, :cv_in].permute(0, 3, 1, 2) / fold_divisor
    return result.to(query.dtype).contiguous(), lse.view(batch, -1)


def backward(
    grad_out, query, keys, values, lse, *, patch_size, softmax_scale, key_eps, fold_divisor, tile, chunk_rows,
    tile_bytes,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
    """(grad_query, grad_keys, grad_values) from the saved ``lse``, as ``torch_tiled.backward``."""
    dtype, (cq_in, cv_in), (cq, cv), kernel = _prepare(query, values, patch_size, "image_backward")
    batch, _, height, width = query.shape
    grad_query = torch.zeros(batch, height + 2, width + 2, cq, dtype=dtype)
    grad_keys = [torch.zeros_like(k, dtype=dtype) for k in keys]
    grad_values = [torch.zeros_like(v, dtype=dtype) for v in values]
    lse = lse.view(batch, height, width).to(dtype)
    for b in range(batch):
        pyramid = _Pyramid(keys, values, b, dtype, softmax_scale, key_eps, cq, cv)
        side = _tile_side(pyramid.n_slots, dtype, tile, tile_bytes)
        keys_t = pyramid.keys.t().contiguous()
        query_padded = _channel_last(query[b], dtype, cq)
        grad_padded = _channel_last(grad_out[b].to(dtype) / fold_divisor, dtype, cv)
        maps = (pyramid.keys, keys_t, pyramid.values)
        band = partial(_backward_band, kernel, pyramid, pyramid.layout(side), side, chunk_rows, query_padded,
                       grad_padded, maps, lse[b].contiguous())  # fmt: skip
        results = _in_bands(height, band)
        for start, stop, grad_query_band, *_ in results:
            grad_query[b, start : stop + 2] += grad_query_band
        grad_scale, grad_key_cols, grad_value_cols = (sum(parts) for parts in list(zip(*results))[3:])
        factors = norm_gradient_factors(
            pyramid.from_slots(grad_scale), pyramid.inverse_norms, pyramid.norms, key_eps, pyramid.shapes, 3
        )
        key_parts, value_parts = pyramid.level_maps(grad_key_cols, cq_in), pyramid.level_maps(grad_value_cols, cv_in)
        for grad_k, grad_v, key, factor, key_part, value_part in zip(
            grad_keys, grad_values, keys, factors, key_parts, value_parts
        ):
            grad_k[b] = key_part + key[b].to(dtype) * factor
            grad_v[b] = value_part
    grad_query = grad_query[:, 1 : height + 1, 1 : width + 1, :cq_in].permute(0, 3, 1, 2).to(query.dtype).contiguous()
    return (
        grad_query,
        [g.to(x.dtype) for g, x in zip(grad_keys, keys)],
        [g.to(x.dtype) for g, x in zip(grad_values, values)],
    )


#: tri_panet::cpu_fused_pyramid_attention_forward / _backward
_OP = define_op("cpu_fused", forward, backward, options=[("tile", int), ("chunk_rows", int), ("tile_bytes", int)])


def pyramid_attention_cpu_fused(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    patch_size: int = 3,
    softmax_scale: float = 10.0,
    key_eps: float = 1e-4,
    fold_divisor: float = 4.0,
    tile: int = DEFAULT_TILE,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    tile_bytes: int | None = None,
) -> torch.Tensor:
    """Pyramid attention by the fused C kernel (CPU tensors, 3 x 3 patches); the reference's contract.

    query [B, Cq, H, W], keys[l] [B, Cq, H_l, W_l], values[l] [B, Cv, H_l, W_l] -> [B, Cv, H, W].
    ``tile``: the largest square query tile; ``chunk_rows``: key rows per chunk; ``tile_bytes``
    (default: the torch path's budget, 128 MiB) bounds the score buffers of all threads together.
    Compiles the kernel on first use for these channel counts (cached; see ``cpu_build``).
    """
    check_positive_int("tile", tile)
    check_positive_int("chunk_rows", chunk_rows)
    tile_bytes = current_tile_bytes() if tile_bytes is None else check_tile_bytes(tile_bytes)
    _check(query, patch_size)
    return _OP(
        query,
        keys,
        values,
        patch_size=patch_size,
        softmax_scale=softmax_scale,
        key_eps=key_eps,
        fold_divisor=fold_divisor,
        tile=tile,
        chunk_rows=chunk_rows,
        tile_bytes=tile_bytes,
    )
