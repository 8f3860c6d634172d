"""Degradations of the four restoration tasks, and their classical baselines.

All functions take float tensors with values in [0, 1], shaped [C, H, W] or [N, C, H, W],
and return the same layout (same dtype and device) unless stated otherwise.

Conventions (ENGINEERING.md "Metrics and degradations", the PANet / BasicSR / SwinIR
test scripts):

- Noise: additive white Gaussian, ``sigma`` on the 0-255 scale. The noisy image is
  neither clipped nor quantised by default (as the DnCNN/FFDNet/SwinIR test scripts).
- JPEG: Pillow's encoder at an integer quality 1..100 (4:2:0 chroma subsampling for
  colour, Pillow's default; a 1-channel image is coded as a grey JPEG).
- Demosaicing: Bayer RGGB, R at (even row, even column), G at (even, odd) and (odd, even),
  B at (odd, odd); the mosaic is a 3-channel image holding zeros where a colour is
  not sampled.
- Super-resolution: MATLAB ``imresize`` bicubic (cubic kernel a = -0.5, antialiased when
  downsampling, symmetric border), the LR inputs of the SR benchmarks.
- Y channel: ITU-R BT.601 studio range as MATLAB ``rgb2ycbcr``:
  Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 1].
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

TASKS = ("denoise", "jpeg", "demosaic", "sr")
SR_SCALES = (2, 3, 4)

__all__ = [
    "TASKS",
    "SR_SCALES",
    "Degradation",
    "add_gaussian_noise",
    "bayer_mosaic",
    "bayer_masks",
    "bicubic_downsample",
    "bicubic_upsample",
    "bilinear_demosaic",
    "jpeg_compress",
    "make_degradation",
    "modcrop",
    "quantize",
    "rgb_to_y",
]


# --------------------------------------------------------------------------- checks


def _as_batch(name: str, img: object, channels: Sequence[int] | None = None) -> tuple[torch.Tensor, bool]:
    """Return (img as [N, C, H, W], whether it was 3-D); raise on anything else."""
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(img).__name__}")
    if not img.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor with values in [0, 1], got dtype {img.dtype}")
    if img.dim() not in (3, 4):
        raise ValueError(f"{name} must be [C, H, W] or [N, C, H, W], got shape {tuple(img.shape)}")
    if any(n == 0 for n in img.shape):
        raise ValueError(f"{name} must not have an empty dimension, got shape {tuple(img.shape)}")
    squeeze = img.dim() == 3
    x = img.unsqueeze(0) if squeeze else img
    if channels is not None and x.shape[1] not in channels:
        want = " or ".join(str(c) for c in channels)
        raise ValueError(f"{name} must have {want} channels, got {x.shape[1]} (shape {tuple(img.shape)})")
    return x, squeeze


def _check_scale(scale: object) -> int:
    if isinstance(scale, bool) or not isinstance(scale, Integral):
        raise TypeError(f"scale must be an int, got {type(scale).__name__}")
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    return int(scale)


def _check_sigma(name: str, sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, Real):
        raise TypeError(f"{name} must be a real number (0-255 scale), got {type(sigma).__name__}")
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"{name} must be finite and >= 0 (0-255 scale), got {sigma!r}")
    return float(sigma)


def _check_quality(name: str, quality: object) -> int:
    if isinstance(quality, bool) or not isinstance(quality, Integral):
        raise TypeError(f"{name} must be an int in 1..100, got {type(quality).__name__}")
    if not 1 <= quality <= 100:
        raise ValueError(f"{name} must be an int in 1..100, got {quality}")
    return int(quality)


def _check_range(name: str, rng: object, check) -> tuple:
    if isinstance(rng, (str, bytes)) or not isinstance(rng, Sequence) or len(rng) != 2:
        raise TypeError(f"{name} must be a pair (low, high), got {rng!r}")
    lo, hi = check(f"{name}[0]", rng[0]), check(f"{name}[1]", rng[1])
    if lo > hi:
        raise ValueError(f"{name} must have low <= high, got {tuple(rng)!r}")
    return lo, hi


# --------------------------------------------------------------------------- helpers


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Round ``img`` (in [0, 1]) to the 8-bit grid k/255, clamping to [0, 1] (half away
    from zero, as MATLAB's and Pillow's conversions to uint8)."""
    return torch.floor(img.clamp(0, 1) * 255 + 0.5) / 255


quantize_fn = quantize  # the functions below take a ``quantize`` flag that shadows the name


def modcrop(img: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop the bottom/right of ``img`` ([..., H, W]) so that H and W are multiples of
    ``scale`` (BasicSR's ``modcrop``; the SR benchmarks' HR images are cropped this way)."""
    scale = _check_scale(scale)
    h, w = img.shape[-2:]
    if h < scale or w < scale:
        raise ValueError(f"image of size {h}x{w} is smaller than scale {scale}")
    return img[..., : h - h % scale, : w - w % scale]


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """Luma Y of ITU-R BT.601 as MATLAB ``rgb2ycbcr`` (studio range, [16, 235] / 255).

    ``img``: [..., 3, H, W] RGB in [0, 1]. Returns [..., 1, H, W] in [16/255, 235/255],
    in the dtype of ``img``.
    """
    if not isinstance(img, torch.Tensor) or not img.is_floating_point():
        raise TypeError(f"img must be a floating torch.Tensor, got {type(img).__name__}")
    if img.dim() < 3 or img.shape[-3] != 3:
        raise ValueError(f"img must be [..., 3, H, W] RGB, got shape {tuple(img.shape)}")
    r, g, b = img.unbind(-3)
    y = (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    return y.unsqueeze(-3)


# --------------------------------------------------------------------------- noise


def add_gaussian_noise(
    img: torch.Tensor,
    sigma: float,
    *,
    generator: torch.Generator | None = None,
    clip: bool = False,
) -> torch.Tensor:
    """Add white Gaussian noise of standard deviation ``sigma`` / 255.

    ``img``: [C, H, W] or [N, C, H, W] in [0, 1]; ``sigma`` on the 0-255 scale (>= 0).
    The noise is drawn on the generator's device (CPU when ``generator`` is None and the
    image is on the CPU) in float32 or float64, so that a seed gives the same noise for
    any image dtype. With ``clip`` the result is clamped to [0, 1]; it is never quantised.
    """
    x, _ = _as_batch("img", img)
    sigma = _check_sigma("sigma", sigma)
    noise_dtype = torch.float64 if img.dtype == torch.float64 else torch.float32
    device = generator.device if generator is not None else img.device
    noise = torch.randn(img.shape, generator=generator, dtype=noise_dtype, device=device)
    out = (img.to(noise_dtype) + noise.to(img.device) * (sigma / 255.0)).to(img.dtype)
    return out.clamp(0, 1) if clip else out


# --------------------------------------------------------------------------- JPEG


def _to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """[C, H, W] float in [0, 1] -> numpy uint8 [H, W, C] (rounded, clamped)."""
    return (quantize(x.detach().double()) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def jpeg_compress(img: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-encode and decode ``img`` with Pillow at ``quality`` (int 1..100).

    ``img``: [C, H, W] or [N, C, H, W] in [0, 1] with C = 3 (RGB JPEG, Pillow's default
    4:2:0 chroma subsampling) or C = 1 (grey JPEG). The input is first rounded to 8 bits;
    the result is the decoded image in [0, 1] (multiples of 1/255), same dtype and device.
    """
    x, squeeze = _as_batch("img", img, channels=(1, 3))
    quality = _check_quality("quality", quality)
    out = []
    for one in x:
        arr = _to_uint8_hwc(one)
        pil = Image.fromarray(arr[..., 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as dec:
            dec_arr = np.asarray(dec.convert(pil.mode))
        if dec_arr.ndim == 2:
            dec_arr = dec_arr[..., None]
        out.append(torch.from_numpy(dec_arr.copy()).permute(2, 0, 1))
    y = torch.stack(out).to(device=img.device, dtype=img.dtype) / 255.0
    return y[0] if squeeze else y


# --------------------------------------------------------------------------- Bayer


def bayer_masks(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """RGGB sampling masks [3, H, W]: 1 where the channel is sampled, else 0."""
    mask = torch.zeros(3, height, width, device=device, dtype=dtype)
    mask[0, 0::2, 0::2] = 1  # R
    mask[1, 0::2, 1::2] = 1  # G on red rows
    mask[1, 1::2, 0::2] = 1  # G on blue rows
    mask[2, 1::2, 1::2] = 1  # B
    return mask


def bayer_mosaic(img: torch.Tensor) -> torch.Tensor:
    """Bayer RGGB mosaic of an RGB image, as a 3-channel image with zeros where a colour
    is not sampled. ``img``: [3, H, W] or [N, 3, H, W] in [0, 1]; same shape out."""
    x, _ = _as_batch("img", img, channels=(3,))
    return img * bayer_masks(*x.shape[-2:], device=img.device, dtype=img.dtype)


def bilinear_demosaic(mosaic: torch.Tensor) -> torch.Tensor:
    """Bilinear demosaicing of an RGGB mosaic (the classical baseline).

    ``mosaic``: [3, H, W] / [N, 3, H, W] as made by :func:`bayer_mosaic` (zeros where
    unsampled), or the raw 1-channel CFA [1, H, W] / [N, 1, H, W]. Returns RGB [.., 3, H, W].
    Each missing value is the mean of its sampled neighbours (G: the 4 direct neighbours;
    R/B: the 2 or 4 nearest samples); sampled values are kept. It is computed as a
    normalised convolution, so border pixels average only the neighbours inside the image.
    """
    x, squeeze = _as_batch("mosaic", mosaic, channels=(1, 3))
    h, w = x.shape[-2:]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    mask = bayer_masks(h, w, device=x.device, dtype=work)
    x = x.to(work)
    # Using the pattern mask (not the zeros of the input) keeps true zero samples intact.
    samples = x * mask  # a 1-channel CFA broadcasts to the 3 planes
    kg = torch.tensor([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=work, device=x.device) / 4
    krb = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=work, device=x.device) / 4
    weight = torch.stack([krb, kg, krb]).unsqueeze(1)  # [3, 1, 3, 3], depthwise
    num = F.conv2d(samples, weight, padding=1, groups=3)
    den = F.conv2d(mask.unsqueeze(0), weight, padding=1, groups=3)
    out = (num / den).to(mosaic.dtype)
    return out[0] if squeeze else out


# --------------------------------------------------------------------------- bicubic
#
# A port of MATLAB's imresize (bicubic): per output sample, the taps and weights of
# ``contributions`` in imresize.m, applied one dimension at a time (rows first, as MATLAB
# when both scales are equal), summing the taps in MATLAB's order in float64. On 8-bit
# input MATLAB rounds (half away from zero) and saturates after EACH pass; ``quantize=True``
# does the same and reproduces the benchmarks' LR files bit for bit (Set5 x2/x3/x4).
# torch's ``interpolate(mode="bicubic", antialias=True)`` has the same kernel but
# renormalises at the border and cannot round between passes; padded symmetrically it
# stays within about 2.3/255 of those files (the tests use it as an oracle for the
# unquantised path).


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


def _resize_axis(x: torch.Tensor, dim: int, out_len: int, scale: float, quantize_out: bool) -> torch.Tensor:
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
    if quantize_out:
        # MATLAB's cast to uint8: saturate, round half away from zero (values are >= 0 here).
        acc = torch.floor(acc.clamp_(0, 255) + 0.5)
    return acc


def _imresize(x: torch.Tensor, out_hw: tuple[int, int], scale: float, *, clamp: bool, quantize_: bool) -> torch.Tensor:
    """Resize [N, C, H, W] to ``out_hw`` (rows first); returns the dtype of ``x``."""
    y = x.to(torch.float64)
    if quantize_:
        y = torch.floor(y.clamp(0, 1) * 255 + 0.5)  # work on the 0-255 grid like a uint8 image
    y = _resize_axis(y, -2, out_hw[0], scale, quantize_)
    y = _resize_axis(y, -1, out_hw[1], scale, quantize_)
    if quantize_:
        y = y / 255
    elif clamp:
        y = y.clamp(0, 1)
    return y.to(x.dtype)


def _no_resize(x: torch.Tensor, clamp: bool, quantize_: bool) -> torch.Tensor:
    return quantize_fn(x) if quantize_ else (x.clamp(0, 1) if clamp else x.clone())


def bicubic_downsample(img: torch.Tensor, scale: int, *, clamp: bool = True, quantize: bool = False) -> torch.Tensor:
    """MATLAB ``imresize(img, 1/scale, 'bicubic')``: antialiased cubic kernel (a = -0.5)
    with a symmetric border, as the LR inputs of the SR benchmarks were made.

    ``img``: [C, H, W] or [N, C, H, W] in [0, 1]; H and W are first cropped (bottom/right)
    to multiples of ``scale`` (:func:`modcrop`: crop the HR target the same way). Returns
    [.., H // scale, W // scale] in the dtype of ``img`` (computed in float64).
    ``quantize=False``: MATLAB on a double image, clamped to [0, 1] unless ``clamp`` is
    False. ``quantize=True``: MATLAB on a uint8 image (input rounded to 8 bits, rounding
    after each pass), which reproduces ``Set5/LR_bicubic`` exactly.
    """
    x, squeeze = _as_batch("img", img)
    scale = _check_scale(scale)
    x = modcrop(x, scale)
    h, w = x.shape[-2:]
    if scale == 1:
        out = _no_resize(x, clamp, quantize)
    else:
        out = _imresize(x, (h // scale, w // scale), 1.0 / scale, clamp=clamp, quantize_=quantize)
    return out[0] if squeeze else out


def bicubic_upsample(img: torch.Tensor, scale: int, *, clamp: bool = True, quantize: bool = False) -> torch.Tensor:
    """MATLAB ``imresize(img, scale, 'bicubic')`` (cubic a = -0.5, symmetric border), the
    SR baseline. ``img``: [C, H, W] or [N, C, H, W] in [0, 1]. Returns
    [.., H * scale, W * scale], clamped to [0, 1] unless ``clamp`` is False;
    ``quantize=True`` mimics MATLAB on a uint8 image (8-bit rounding after each pass)."""
    x, squeeze = _as_batch("img", img)
    scale = _check_scale(scale)
    h, w = x.shape[-2:]
    if scale == 1:
        out = _no_resize(x, clamp, quantize)
    else:
        out = _imresize(x, (h * scale, w * scale), float(scale), clamp=clamp, quantize_=quantize)
    return out[0] if squeeze else out


# --------------------------------------------------------------------------- factory


class Degradation:
    """A task's degradation: ``degrade(clean, generator=None) -> degraded``.

    Made by :func:`make_degradation`. ``clean``: [C, H, W] or [N, C, H, W] in [0, 1]; with
    a blind range the parameter is drawn from ``generator`` for each image (uniform real
    sigma in [low, high]; uniform integer quality in [low, high]). The drawn values of the
    last call are kept in ``last_params`` (one dict per image).
    """

    def __init__(self, task, *, sigma, sigma_range, quality, quality_range, scale, clip, quantize_lr):
        self.task = task
        self.sigma = sigma
        self.sigma_range = sigma_range
        self.quality = quality
        self.quality_range = quality_range
        self.scale = scale
        self.clip = clip
        self.quantize = quantize_lr
        self.last_params: list[dict] = []

    def __repr__(self) -> str:
        keys = {
            "denoise": ("sigma", "sigma_range", "clip"),
            "jpeg": ("quality", "quality_range"),
            "demosaic": (),
            "sr": ("scale", "quantize"),
        }[self.task]
        args = "".join(f", {k}={getattr(self, k)!r}" for k in keys if getattr(self, k) is not None)
        return f"make_degradation({self.task!r}{args})"

    def sample_params(self, generator: torch.Generator | None = None) -> dict:
        """Draw this call's parameters (consumes ``generator`` only for blind ranges)."""
        if self.task == "denoise":
            if self.sigma_range is None:
                return {"sigma": self.sigma}
            lo, hi = self.sigma_range
            u = torch.rand((), generator=generator, dtype=torch.float64).item()
            return {"sigma": lo + (hi - lo) * u}
        if self.task == "jpeg":
            if self.quality_range is None:
                return {"quality": self.quality}
            lo, hi = self.quality_range
            return {"quality": int(torch.randint(lo, hi + 1, (), generator=generator).item())}
        if self.task == "sr":
            return {"scale": self.scale}
        return {}

    def _one(self, x: torch.Tensor, generator) -> tuple[torch.Tensor, dict]:
        p = self.sample_params(generator)
        if self.task == "denoise":
            return add_gaussian_noise(x, p["sigma"], generator=generator, clip=self.clip), p
        if self.task == "jpeg":
            return jpeg_compress(x, p["quality"]), p
        if self.task == "demosaic":
            return bayer_mosaic(x), p
        return bicubic_downsample(x, self.scale, quantize=self.quantize), p

    def __call__(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        channels = (3,) if self.task == "demosaic" else (1, 3) if self.task == "jpeg" else None
        x, squeeze = _as_batch("clean", clean, channels=channels)
        outs, params = [], []
        for one in x:
            y, p = self._one(one, generator)
            outs.append(y)
            params.append(p)
        self.last_params = params
        out = torch.stack(outs)
        return out[0] if squeeze else out


def make_degradation(
    task: str,
    *,
    sigma: float | None = None,
    sigma_range: tuple[float, float] | None = None,
    quality: int | None = None,
    quality_range: tuple[int, int] | None = None,
    scale: int | None = None,
    clip: bool = False,
    quantize: bool | None = None,
) -> Degradation:
    """Build the degradation of ``task`` ("denoise", "jpeg", "demosaic" or "sr").

    - denoise: exactly one of ``sigma`` (0-255 scale, >= 0) or ``sigma_range`` (low, high)
      for blind training; ``clip`` clamps the noisy image to [0, 1] (default: no).
    - jpeg: exactly one of ``quality`` (int 1..100) or ``quality_range`` (low, high).
    - demosaic: no parameter (RGGB mosaic, 3 channels with zeros).
    - sr: ``scale`` in 2, 3, 4 (MATLAB bicubic downsampling). ``quantize`` (default True for
      sr) rounds the LR image to 8 bits like the benchmarks' LR PNG files.

    Parameters that do not belong to ``task`` raise ValueError, so a typo cannot pass
    silently. Returns a :class:`Degradation`, called as ``degrade(clean, generator)``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}")
    given = {
        "sigma": sigma,
        "sigma_range": sigma_range,
        "quality": quality,
        "quality_range": quality_range,
        "scale": scale,
    }
    allowed = {
        "denoise": {"sigma", "sigma_range"},
        "jpeg": {"quality", "quality_range"},
        "demosaic": set(),
        "sr": {"scale"},
    }[task]
    extra = [k for k, v in given.items() if v is not None and k not in allowed]
    if extra:
        takes = ", ".join(sorted(allowed)) or "nothing"
        raise ValueError(f"{', '.join(extra)} does not apply to task {task!r} (it takes: {takes})")
    if quantize is not None and task != "sr":
        raise ValueError(f"quantize applies to task 'sr' only, got task {task!r}")
    if clip and task != "denoise":
        raise ValueError(f"clip applies to task 'denoise' only, got task {task!r}")
    if task == "denoise":
        if (sigma is None) == (sigma_range is None):
            raise ValueError("task 'denoise' needs exactly one of sigma (0-255 scale) or sigma_range (low, high)")
        if sigma is not None:
            sigma = _check_sigma("sigma", sigma)
        else:
            sigma_range = _check_range("sigma_range", sigma_range, _check_sigma)
    elif task == "jpeg":
        if (quality is None) == (quality_range is None):
            raise ValueError("task 'jpeg' needs exactly one of quality (1..100) or quality_range (low, high)")
        if quality is not None:
            quality = _check_quality("quality", quality)
        else:
            quality_range = _check_range("quality_range", quality_range, _check_quality)
    elif task == "sr":
        if scale is None:
            raise ValueError(f"task 'sr' needs scale, one of {SR_SCALES}")
        if isinstance(scale, bool) or not isinstance(scale, Integral) or scale not in SR_SCALES:
            raise ValueError(f"scale must be one of {SR_SCALES} for task 'sr', got {scale!r}")
        scale = int(scale)
        quantize = True if quantize is None else bool(quantize)
    return Degradation(
        task,
        sigma=sigma,
        sigma_range=sigma_range,
        quality=quality,
        quality_range=quality_range,
        scale=scale,
        clip=bool(clip) if task == "denoise" else None,
        quantize_lr=quantize,
    )
