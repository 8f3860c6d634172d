"""Helpers shared by the forward and backward kernels (implicit im2col addressing)."""

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def shifted(y, x, valid, h, w, D, PATCH: tl.constexpr):
    """Row-major index of position (y, x) moved by patch offset ``D`` (0 <= D < PATCH**2, row-major
    over [-r, r]^2) inside an h x w map, and whether it lies inside (outside reads the zero padding).
    ``D`` is a compile-time constant in unrolled loops or a runtime loop index."""
    ys = y + (D // PATCH - PATCH // 2)
    xs = x + (D % PATCH - PATCH // 2)
    inside = valid & (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    return ys * w + xs, inside


@triton.jit
def row_offsets(idx, stride):
    """Element offsets ``idx * stride`` of rows ``idx`` of a map stored row by row (a channel-last
    map: position rows of ``stride`` channels), in 64 bits. Positions fit int32, positions x
    channels do not always: with PA-EDSR's 256 value channels from ~8.4 M keys (the five-level
    pyramid of a 2560 x 1440 image), with PANet's 64 from ~34 M keys (5K). The multiply is per
    row, before the broadcast over channels."""
    return idx.to(tl.int64) * stride


@triton.jit
def level_geometry(LEVELS, level):
    """(offset into the key index space, height, width) of pyramid level ``level`` (LEVELS: int32 [L, 3])."""
    return tl.load(LEVELS + 3 * level), tl.load(LEVELS + 3 * level + 1), tl.load(LEVELS + 3 * level + 2)


@triton.jit
def block_positions(start, n, w, BLOCK: tl.constexpr):
    """Indices start .. start + BLOCK of a row-major map of ``n`` positions and width ``w``:
    (index, index < n, row, column)."""
    offs = start + tl.arange(0, BLOCK)
    y = offs // w
    return offs, offs < n, y, offs - y * w
