"""Inference (``restore``): whole-image or tiled restoration with smooth blending, padding
to the model's size multiple, optional x8 self-ensemble, and fp16/bf16 autocast.

Tiling. Tiles of ``tile`` x ``tile`` input pixels are spread evenly so that neighbours
overlap by at least ``tile_overlap`` pixels. Each tile's output is weighted by a separable
window that is 1 inside the tile and, on every side that has a neighbour, rises over the
overlap: 0 on the outer quarter of the overlap (where a tile's output suffers most from the
missing context beyond its edge), a raised-cosine ramp over the middle half, 1 beyond.
Overlapping outputs are averaged with these weights (normalised by their sum), so there
are no seams, and a model whose receptive-field radius is at most ``tile_overlap // 4``
gives exactly the whole-image result. Image borders keep weight 1 (no neighbour there).
Pyramid attention is non-local, so tiled and whole-image results of PANet models differ
slightly; larger tiles bring them closer.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .data import bicubic_upsample, rgb_to_ycbcr, ycbcr_to_rgb
from .models import describe
from .models.common import check_int

__all__ = ["blend_window", "check_tile", "restore", "restore_luma", "tile_starts"]

_AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Evenly spread starts of tiles of ``tile`` covering [0, length), neighbours overlapping
    by >= ``overlap`` (one tile if it covers everything), every start a multiple of ``align``
    (``length`` and ``tile`` must be multiples of it)."""
    if length % align or tile % align:
        raise ValueError(f"length ({length}) and tile ({tile}) must be multiples of align ({align})")
    if length <= tile:
        return [0]
    # in units of align: the overlap rounded up, so that it still holds in pixels
    length, tile = length // align, tile // align
    overlap = min(-(-overlap // align), tile - 1)
    n = max(math.ceil((length - overlap) / (tile - overlap)), 2)
    # average step (length - tile) / (n - 1) <= tile - overlap, so every rounded step is too
    return [align * round(i * (length - tile) / (n - 1)) for i in range(n)]


def check_tile(tile: int | tuple[int, int] | None, tile_overlap: int, multiple: int = 1) -> tuple[int, int] | None:
    """``tile`` (None, an int or (height, width)) as (height, width), or None; ValueError
    unless each side is an int larger than ``tile_overlap`` and a multiple of ``multiple``."""
    if tile is None:
        return None
    tiles = tuple(tile) if isinstance(tile, (tuple, list)) else (tile, tile)
    if len(tiles) != 2:
        raise ValueError(f"tile must be an int or (height, width), got {tile!r}")
    for t in tiles:
        check_int("tile", t, 1)
        if t <= tile_overlap:
            raise ValueError(f"tile ({t}) must be larger than tile_overlap ({tile_overlap})")
        if t % multiple:
            raise ValueError(f"tile ({t}) must be a multiple of multiple ({multiple})")
    return tiles


def blend_window(size: int, overlap: int, left: bool, right: bool) -> torch.Tensor:
    """1-D blending weights [size] (float64): ramps of width ``overlap`` on the sides that
    have a neighbour (``left`` / ``right``): 0 on the outer quarter, raised cosine over the
    middle half, 1 inside. Mirror-image ramps of two neighbours sum to 1."""
    w = torch.ones(size, dtype=torch.float64)
    if overlap <= 0:
        return w
    margin = overlap // 4
    n_ramp = overlap - 2 * margin
    i = torch.arange(n_ramp, dtype=torch.float64)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (i + 0.5) / n_ramp)
    up = torch.cat([torch.zeros(margin, dtype=torch.float64), ramp, torch.ones(margin, dtype=torch.float64)])
    up = up[:size]
    if left:
        w[: up.numel()] = torch.minimum(w[: up.numel()], up)
    if right:
        w[size - up.numel() :] = torch.minimum(w[size - up.numel() :], up.flip(0))
    return w


def _model_param(model) -> torch.Tensor | None:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p
        for b in model.buffers():
            return b
    return None


def _check_output(y: torch.Tensor, x: torch.Tensor, scale: int) -> None:
    want = (x.shape[0], x.shape[2] * scale, x.shape[3] * scale)
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or (y.shape[0], y.shape[2], y.shape[3]) != want:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(
            f"the model turned an input of shape {tuple(x.shape)} into {got}; with scale={scale} "
            f"the output must be [{want[0]}, C, {want[1]}, {want[2]}] (pass the model's scale)"
        )


def _forward_tiled(
    model, x: torch.Tensor, tile: tuple[int, int], overlap: int, scale: int, acc_dtype, multiple: int
) -> torch.Tensor:
    """Tiled forward of ``x`` [N, C, H, W] (H, W multiples of ``multiple``) -> [N, C', H*scale,
    W*scale] with blended overlaps; tiles start on multiples of ``multiple``."""
    n, _, h, w = x.shape
    th, tw = min(tile[0], h), min(tile[1], w)
    ys, xs = tile_starts(h, th, overlap, multiple), tile_starts(w, tw, overlap, multiple)
    out = wsum = None
    for y0 in ys:
        wy = blend_window(th * scale, overlap * scale, y0 > 0, y0 + th < h)
        for x0 in xs:
            inp = x[:, :, y0 : y0 + th, x0 : x0 + tw]
            y = model(inp)
            _check_output(y, inp, scale)
            if out is None:
                out = torch.zeros(n, y.shape[1], h * scale, w * scale, dtype=acc_dtype, device=x.device)
                wsum = torch.zeros(1, 1, h * scale, w * scale, dtype=acc_dtype, device=x.device)
            wx = blend_window(tw * scale, overlap * scale, x0 > 0, x0 + tw < w)
            weight = (wy[:, None] * wx[None, :]).to(device=x.device, dtype=acc_dtype)
            sy, sx = slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale)
            out[:, :, sy, sx] += y.to(acc_dtype) * weight
            wsum[:, :, sy, sx] += weight
    return out / wsum


def _ensemble(fn, x: torch.Tensor) -> torch.Tensor:
    """Mean of fn over the 8 flips/transposes of x (each output transformed back)."""
    acc = None
    for t in range(8):
        transpose, hflip, vflip = bool(t & 4), bool(t & 1), bool(t & 2)
        xt = x.transpose(-1, -2) if transpose else x
        if hflip:
            xt = xt.flip(-1)
        if vflip:
            xt = xt.flip(-2)
        y = fn(xt)
        if vflip:
            y = y.flip(-2)
        if hflip:
            y = y.flip(-1)
        if transpose:
            y = y.transpose(-1, -2)
        acc = y if acc is None else acc + y
    return acc / 8


def restore(
    model,
    image: torch.Tensor,
    *,
    tile: int | tuple[int, int] | None = None,
    tile_overlap: int = 16,
    self_ensemble: bool = False,
    scale: int | None = None,
    multiple: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Run ``model`` on ``image`` [N, C, H, W] or [C, H, W] in [0, 1]; returns the restored
    image [N, C', H*scale, W*scale] (or without N), clamped to [0, 1], in the image's dtype
    and on its device.

    Args:
        model: an nn.Module (or callable) mapping [N, C, h, w] -> [N, C', h*scale, w*scale].
            Run in eval mode under ``torch.no_grad`` (its mode is restored afterwards).
            Its channels, scale and size multiple come from ``tri_panet.models.describe``.
        tile: None for the whole image at once, else the tile side in input pixels (int or
            (height, width)); must exceed ``tile_overlap`` and be a multiple of ``multiple``.
        tile_overlap: minimum overlap of neighbouring tiles, input pixels (see module doc).
        self_ensemble: average the outputs over the 8 flips/transposes (x8 time).
        scale: output/input size ratio; None takes the model's (1 for a foreign model).
        multiple: the model needs H, W divisible by it; the image is reflect-padded up to it
            and the output cropped back. None takes the model's (1 for a foreign model).
        dtype: None/float32 for full precision, or float16/bfloat16 for autocast (meant for
            GPUs; on a CPU it works but is rarely faster).
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a floating tensor with values in [0, 1], got dtype {image.dtype}")
    if image.dim() not in (3, 4):
        raise ValueError(f"image must be [N, C, H, W] or [C, H, W], got shape {tuple(image.shape)}")
    if image.numel() == 0:
        raise ValueError(f"image must not be empty, got shape {tuple(image.shape)}")
    squeeze = image.dim() == 3
    x = image[None] if squeeze else image
    info = describe(model)
    if info.n_colors is not None and x.shape[1] != info.n_colors:
        raise ValueError(
            f"image has {x.shape[1]} channels but the model expects n_colors={info.n_colors} "
            f"(image shape {tuple(image.shape)})"
            + ("; restore_luma restores a colour image with a grey model" if info.n_colors == 1 else "")
        )
    scale = info.scale if scale is None else scale
    multiple = info.multiple if multiple is None else multiple
    check_int("scale", scale, 1)
    check_int("multiple", multiple, 1)
    check_int("tile_overlap", tile_overlap, 0)
    tiles = check_tile(tile, tile_overlap, multiple)
    if dtype is not None and dtype not in (torch.float32, *_AUTOCAST_DTYPES):
        raise ValueError(f"dtype must be None, torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    if not isinstance(self_ensemble, bool):
        raise TypeError(f"self_ensemble must be a bool, got {type(self_ensemble).__name__}")

    ref = _model_param(model)
    device = ref.device if ref is not None else x.device
    # compute in the model's dtype (float32 for float16/bfloat16 models: autocast handles those)
    work_dtype = ref.dtype if ref is not None and ref.dtype == torch.float64 else torch.float32
    x = x.to(device=device, dtype=work_dtype)

    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        # reflect needs the pad to be smaller than the side; tiny images fall back to replicate
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)

    if tile is None:

        def run(inp: torch.Tensor) -> torch.Tensor:
            y = model(inp)
            _check_output(y, inp, scale)
            return y.to(work_dtype)

    else:

        def run(inp: torch.Tensor) -> torch.Tensor:
            return _forward_tiled(model, inp, tiles, tile_overlap, scale, work_dtype, multiple)

    if dtype in _AUTOCAST_DTYPES:
        autocast = torch.autocast(device_type=device.type, dtype=dtype)
    else:
        autocast = contextlib.nullcontext()
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad(), autocast:
            out = _ensemble(run, x) if self_ensemble else run(x)
    finally:
        if was_training:
            model.train()
    out = out[:, :, : h * scale, : w * scale].clamp(0.0, 1.0)
    out = out.to(device=image.device, dtype=image.dtype)
    return out[0] if squeeze else out


def restore_luma(model, image: torch.Tensor, **kwargs) -> torch.Tensor:
    """Restore a colour ``image`` [N, 3, H, W] or [3, H, W] in [0, 1] with a one-channel
    (grey) ``model``: its JFIF luma Y (the grey that Pillow reads and grey models are trained
    on) goes through :func:`restore` (``kwargs`` as there), the chroma Cb, Cr is kept (for SR
    upscaled with MATLAB bicubic). Returns RGB [.., 3, H*scale, W*scale], clamped to [0, 1].

    Why: JPEG stores YCbCr and the published JPEG models restore Y only; restoring Y of a
    colour photo and keeping its colours beats returning it grey.
    """
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or image.shape[-3] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be an RGB tensor [N, 3, H, W] or [3, H, W], got {shape}")
    ycbcr = rgb_to_ycbcr(image)
    luma = restore(model, ycbcr[..., :1, :, :], **kwargs)
    chroma = ycbcr[..., 1:, :, :]
    scale = luma.shape[-1] // image.shape[-1]
    if scale > 1:
        chroma = bicubic_upsample(chroma, scale, clamp=False)
    return ycbcr_to_rgb(torch.cat([luma, chroma.to(luma.dtype)], dim=-3)).clamp(0.0, 1.0)
