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
