"""MATLAB ``imresize`` bicubic, ported: the LR inputs of the SR benchmarks and the SR baseline.

Per output sample, the taps and weights of ``contributions`` in imresize.m (Keys' cubic,
a = -0.5, antialiased when downsampling, symmetric border) are applied one dimension at a
time (rows first, as MATLAB when both scales are equal), summing the taps in MATLAB's
order in float64. On 8-bit input MATLAB rounds (half away from zero) and saturates after
EACH pass; ``quantize=True`` does the same and reproduces the benchmarks' LR files bit for
bit (Set5 x2/x3/x4). torch's ``interpolate(mode="bicubic", antialias=True)`` has the same
kernel but renormalises at the border and cannot round between passes; padded
symmetrically it stays within about 2.3/255 of those files (the tests use it as an oracle
for the unquantised path).
"""

from __future__ import annotations

import math

import torch

from . import image

__all__ = ["bicubic_downsample", "bicubic_upsample"]


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def _contributions(in_len: int, out_len: int, scale: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """MATLAB's imresize ``contributions``: weights [out, P] (float64) and 0-based input
    indices [out, P] (symmetric border) for resizing one axis by ``scale`` = out / in."""
    antialias = scale < 1
    kernel_width = 4.0 / scale if antialias else 4.0
    x = torch.arange(1, out_len + 1, dtype=torch.float64, device=device)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output sample centres in 1-based input coordinates
    left = torch.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    ind = left[:, None] + torch.arange(taps, dtype=torch.float64, device=device)
    dist = u[:, None] - ind
    weights = scale * _cubic(scale * dist) if antialias else _cubic(dist)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # 'symmetric' border: the axis continues as its mirror image, edge sample repeated.
    j = torch.remainder(ind.long() - 1, 2 * in_len)
    ind = torch.where(j < in_len, j, 2 * in_len - 1 - j)
    keep = (weights != 0).any(dim=0)  # MATLAB drops taps that are zero for every sample
    return weights[:, keep], ind[:, keep]


def _resize_axis(x: torch.Tensor, dim: int, out_len: int, scale: float, round_8bit: bool) -> torch.Tensor:
    """Resize ``x`` along ``dim`` to ``out_len`` samples (float64 in, float64 out)."""
    weights, ind = _contributions(x.shape[dim], out_len, scale, x.device)
    taps = weights.shape[1]
    dim = dim % x.dim()
    # One gather for all taps (tap-major), then a sequential multiply-add over the taps in
    # MATLAB's order (not a matmul or a sum()), so that exact ties round as MATLAB's do.
    gathered = x.index_select(dim, ind.t().reshape(-1))
    gathered = gathered.view(*x.shape[:dim], taps, out_len, *x.shape[dim + 1 :])
    view = [1] * x.dim()
    view[dim] = out_len
    acc = gathered.select(dim, 0) * weights[:, 0].view(view)
    for k in range(1, taps):
        acc.add_(gathered.select(dim, k) * weights[:, k].view(view))
    if round_8bit:
        # MATLAB's cast to uint8: saturate, round half away from zero (values are >= 0 here).
        acc = torch.floor(acc.clamp_(0, 255) + 0.5)
    return acc


def _imresize(x: torch.Tensor, out_hw: tuple[int, int], scale: float, *, clamp: bool, quantize: bool) -> torch.Tensor:
    """Resize [N, C, H, W] to ``out_hw`` (rows first); returns the dtype of ``x``."""
    if scale == 1:
        return image.quantize(x) if quantize else (x.clamp(0, 1) if clamp else x.clone())
    y = x.to(torch.float64)
    if quantize:
        y = torch.floor(y.clamp(0, 1) * 255 + 0.5)  # work on the 0-255 grid like a uint8 image
    y = _resize_axis(y, -2, out_hw[0], scale, quantize)
    y = _resize_axis(y, -1, out_hw[1], scale, quantize)
    if quantize:
        y = y / 255
    elif clamp:
        y = y.clamp(0, 1)
    return y.to(x.dtype)


def bicubic_downsample(img: torch.Tensor, scale: int, *, clamp: bool = True, quantize: bool = False) -> torch.Tensor:
    """MATLAB ``imresize(img, 1/scale, 'bicubic')``: antialiased cubic kernel (a = -0.5)
    with a symmetric border, as the LR inputs of the SR benchmarks were made.

    ``img``: [C, H, W] or [N, C, H, W] in [0, 1]; H and W are first cropped (bottom/right)
    to multiples of ``scale`` (:func:`~tri_panet.data.image.modcrop`: crop the HR target
    the same way). Returns [.., H // scale, W // scale] in the dtype of ``img`` (computed
    in float64). ``quantize=False``: MATLAB on a double image, clamped to [0, 1] unless
    ``clamp`` is False. ``quantize=True``: MATLAB on a uint8 image (input rounded to 8
    bits, rounding after each pass), which reproduces ``Set5/LR_bicubic`` exactly.
    """
    x, squeeze = image.as_batch("img", img)
    scale = image.check_scale(scale)
    x = image.modcrop(x, scale)
    h, w = x.shape[-2:]
    out = _imresize(x, (h // scale, w // scale), 1.0 / scale, clamp=clamp, quantize=quantize)
    return out[0] if squeeze else out


def bicubic_upsample(img: torch.Tensor, scale: int, *, clamp: bool = True, quantize: bool = False) -> torch.Tensor:
    """MATLAB ``imresize(img, scale, 'bicubic')`` (cubic a = -0.5, symmetric border), the
    SR baseline. ``img``: [C, H, W] or [N, C, H, W] in [0, 1]. Returns
    [.., H * scale, W * scale], clamped to [0, 1] unless ``clamp`` is False;
    ``quantize=True`` mimics MATLAB on a uint8 image (8-bit rounding after each pass)."""
    x, squeeze = image.as_batch("img", img)
    scale = image.check_scale(scale)
    h, w = x.shape[-2:]
    out = _imresize(x, (h * scale, w * scale), float(scale), clamp=clamp, quantize=quantize)
    return out[0] if squeeze else out
