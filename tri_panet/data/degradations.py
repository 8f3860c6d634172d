"""Degradations of the four restoration tasks, and the demosaicing baseline.

All functions take float tensors with values in [0, 1], shaped [C, H, W] or [N, C, H, W],
and return the same layout (same dtype and device) unless stated otherwise.

Conventions (those of the PANet / BasicSR / SwinIR test scripts):

- Noise: additive white Gaussian, ``sigma`` on the 0-255 scale. The noisy image is
  neither clipped nor quantised by default (as the DnCNN/FFDNet/SwinIR test scripts).
- JPEG: Pillow's encoder at an integer quality 1..100 (4:2:0 chroma subsampling for
  colour, Pillow's default; a 1-channel image is coded as a grey JPEG).
- Demosaicing: Bayer RGGB, R at (even row, even column), G at (even, odd) and (odd, even),
  B at (odd, odd); the mosaic is a 3-channel image holding zeros where a colour is
  not sampled.
- Super-resolution: MATLAB ``imresize`` bicubic (:mod:`tri_panet.data.matlab_resize`),
  the LR inputs of the SR benchmarks.
- Y channel: ITU-R BT.601 studio range as MATLAB ``rgb2ycbcr``:
  Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 1].

A task's degradation as one object (:class:`Degradation`: :class:`GaussianNoise`,
:class:`JPEGCompression`, :class:`BayerMosaic`, :class:`BicubicDownsampling`) draws its
parameters per image from a generator and returns them with the degraded image;
``tri_panet.tasks.make_degradation`` builds the one of a task by name.
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

from .image import as_batch, check_scale, quantize
from .matlab_resize import bicubic_downsample

__all__ = [
    "BayerMosaic",
    "BicubicDownsampling",
    "Degradation",
    "GaussianNoise",
    "JPEGCompression",
    "add_gaussian_noise",
    "bayer_masks",
    "bayer_mosaic",
    "bilinear_demosaic",
    "cfa_to_mosaic",
    "jpeg_compress",
    "rgb_to_y",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]


# --------------------------------------------------------------------------- checks


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


# --------------------------------------------------------------------------- colour


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """Luma Y of ITU-R BT.601 as MATLAB ``rgb2ycbcr`` (studio range, [16, 235] / 255).

    ``img``: [..., 3, H, W] RGB in [0, 1]. Returns [..., 1, H, W] in [16/255, 235/255],
    in the dtype of ``img``.
    """
    r, g, b = _check_three_channels("img", img, "RGB").unbind(-3)
    y = (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    return y.unsqueeze(-3)


def _check_three_channels(name: str, img: object, what: str) -> torch.Tensor:
    if not isinstance(img, torch.Tensor) or not img.is_floating_point():
        raise TypeError(f"{name} must be a floating torch.Tensor, got {type(img).__name__}")
    if img.dim() < 3 or img.shape[-3] != 3:
        raise ValueError(f"{name} must be [..., 3, H, W] {what}, got shape {tuple(img.shape)}")
    return img


# JFIF (full-range BT.601), the YCbCr that JPEG files store; its Y is Pillow's "L" luma,
# the grey that grey models are trained on.
_JFIF_FROM_RGB = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_JFIF_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))
_CHROMA_OFFSET = 128.0 / 255.0


def rgb_to_ycbcr(img: torch.Tensor) -> torch.Tensor:
    """RGB -> JFIF YCbCr (full range, as in JPEG files; Y is Pillow's "L" luma), not clamped.

    ``img``: [..., 3, H, W] RGB in [0, 1] -> [..., 3, H, W] (Y, Cb, Cr), Y in [0, 1], Cb and Cr
    centred on 128/255. Exactly inverted by :func:`ycbcr_to_rgb` (up to rounding).
    """
    img = _check_three_channels("img", img, "RGB")
    matrix = img.new_tensor(_JFIF_FROM_RGB)
    out = torch.einsum("ij,...jhw->...ihw", matrix, img)
    return out + img.new_tensor([0.0, _CHROMA_OFFSET, _CHROMA_OFFSET]).view(3, 1, 1)


def ycbcr_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """JFIF YCbCr [..., 3, H, W] (:func:`rgb_to_ycbcr`'s convention) -> RGB, not clamped."""
    img = _check_three_channels("img", img, "YCbCr")
    centred = img - img.new_tensor([0.0, _CHROMA_OFFSET, _CHROMA_OFFSET]).view(3, 1, 1)
    return torch.einsum("ij,...jhw->...ihw", img.new_tensor(_JFIF_TO_RGB), centred)


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
    as_batch("img", img)
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
    x, squeeze = as_batch("img", img, channels=(1, 3))
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
    x, _ = as_batch("img", img, channels=(3,))
    return img * bayer_masks(*x.shape[-2:], device=img.device, dtype=img.dtype)


def cfa_to_mosaic(cfa: torch.Tensor) -> torch.Tensor:
    """A raw one-channel RGGB CFA [1, H, W] as the 3-channel mosaic [3, H, W] that
    :func:`bayer_mosaic` makes (and the demosaicing models take)."""
    return bayer_mosaic(cfa.expand(3, -1, -1).contiguous())


def bilinear_demosaic(mosaic: torch.Tensor) -> torch.Tensor:
    """Bilinear demosaicing of an RGGB mosaic (the classical baseline).

    ``mosaic``: [3, H, W] / [N, 3, H, W] as made by :func:`bayer_mosaic` (zeros where
    unsampled), or the raw 1-channel CFA [1, H, W] / [N, 1, H, W]. Returns RGB [.., 3, H, W].
    Each missing value is the mean of its sampled neighbours (G: the 4 direct neighbours;
    R/B: the 2 or 4 nearest samples); sampled values are kept. It is computed as a
    normalised convolution, so border pixels average only the neighbours inside the image.
    """
    x, squeeze = as_batch("mosaic", mosaic, channels=(1, 3))
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


# --------------------------------------------------------------------------- degradations


class Degradation:
    """A task's degradation of clean images: ``degraded, params = degradation.apply(clean, generator)``.

    ``clean``: [C, H, W] or [N, C, H, W] in [0, 1]. Each image draws its parameters (a
    blind noise level, a JPEG quality) from ``generator`` and is degraded; ``params`` holds
    one dict per image (a list of one for a [C, H, W] image), e.g. ``[{"sigma": 17.3}]``.
    ``degradation(clean, generator)`` returns the degraded image alone. Subclasses set
    :attr:`task`, :attr:`channels`, :attr:`scale` and implement :meth:`_degrade`.
    """

    #: The task (a key of ``tri_panet.tasks.TASKS``) this is the degradation of.
    task: str = ""
    #: The channel counts accepted (None: any).
    channels: tuple[int, ...] | None = None
    #: Input side / output side (the SR factor; 1 for the other tasks).
    scale: int = 1

    def sample_params(self, generator: torch.Generator | None = None) -> dict:
        """Draw one image's parameters (consumes ``generator`` only for blind ranges)."""
        return {}

    def _degrade(self, img: torch.Tensor, params: dict, generator: torch.Generator | None) -> torch.Tensor:
        """Degrade one image [C, H, W] with its drawn ``params``."""
        raise NotImplementedError

    def apply(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[dict]]:
        """(degraded image in the layout of ``clean``, one parameter dict per image)."""
        x, squeeze = as_batch("clean", clean, channels=self.channels)
        outs, params = [], []
        for one in x:
            p = self.sample_params(generator)  # before the noise: both draw from the same generator
            outs.append(self._degrade(one, p, generator))
            params.append(p)
        out = torch.stack(outs)
        return (out[0] if squeeze else out), params

    def __call__(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The degraded image (see :meth:`apply`)."""
        return self.apply(clean, generator)[0]

    def describe(self, seed: int) -> str:
        """One line for reports; ``seed`` is named where the result depends on it."""
        raise NotImplementedError

    def _settings(self) -> dict:
        """The constructor arguments, for ``repr``."""
        return {}

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self._settings().items() if v is not None)
        return f"make_degradation({self.task!r}{args})"


class GaussianNoise(Degradation):
    """AWGN of a fixed ``sigma`` or, blind, of a ``sigma_range`` (low, high): each image
    draws a uniform real sigma in [low, high]. Both on the 0-255 scale; give exactly one.
    ``clip`` clamps the noisy image to [0, 1] (the benchmarks do not)."""

    task = "denoise"

    def __init__(self, sigma: float | None = None, sigma_range: tuple[float, float] | None = None, clip: bool = False):
        if (sigma is None) == (sigma_range is None):
            raise ValueError(f"task {self.task!r} needs exactly one of sigma (0-255 scale) or sigma_range (low, high)")
        self.sigma = None if sigma is None else _check_sigma("sigma", sigma)
        self.sigma_range = None if sigma_range is None else _check_range("sigma_range", sigma_range, _check_sigma)
        self.clip = bool(clip)

    def sample_params(self, generator=None) -> dict:
        if self.sigma_range is None:
            return {"sigma": self.sigma}
        lo, hi = self.sigma_range
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        return {"sigma": lo + (hi - lo) * u}

    def _degrade(self, img, params, generator):
        return add_gaussian_noise(img, params["sigma"], generator=generator, clip=self.clip)

    def describe(self, seed: int) -> str:
        level = f"sigma {self.sigma:g}" if self.sigma is not None else "sigma in [{:g}, {:g}]".format(*self.sigma_range)
        clip = "clipped to [0, 1]" if self.clip else "not clipped"
        return f"AWGN {level} (0-255 scale), {clip}, not quantised, seed {seed}"

    def _settings(self) -> dict:
        return {"sigma": self.sigma, "sigma_range": self.sigma_range, "clip": self.clip}


class JPEGCompression(Degradation):
    """Pillow JPEG at a fixed ``quality`` or, blind, a ``quality_range`` (low, high): each
    image draws a uniform integer quality in [low, high]. Give exactly one. 1 or 3 channels."""

    task = "jpeg"
    channels = (1, 3)

    def __init__(self, quality: int | None = None, quality_range: tuple[int, int] | None = None):
        if (quality is None) == (quality_range is None):
            raise ValueError(f"task {self.task!r} needs exactly one of quality (1..100) or quality_range (low, high)")
        self.quality = None if quality is None else _check_quality("quality", quality)
        self.quality_range = (
            None if quality_range is None else _check_range("quality_range", quality_range, _check_quality)
        )

    def sample_params(self, generator=None) -> dict:
        if self.quality_range is None:
            return {"quality": self.quality}
        lo, hi = self.quality_range
        return {"quality": int(torch.randint(lo, hi + 1, (), generator=generator).item())}

    def _degrade(self, img, params, generator):
        return jpeg_compress(img, params["quality"])

    def describe(self, seed: int) -> str:
        if self.quality is not None:
            return f"JPEG quality {self.quality} (Pillow)"
        return "JPEG quality in [{}, {}] (Pillow), seed {}".format(*self.quality_range, seed)

    def _settings(self) -> dict:
        return {"quality": self.quality, "quality_range": self.quality_range}


class BayerMosaic(Degradation):
    """The RGGB mosaic of an RGB image (:func:`bayer_mosaic`); no parameter."""

    task = "demosaic"
    channels = (3,)

    def _degrade(self, img, params, generator):
        return bayer_mosaic(img)

    def describe(self, seed: int) -> str:
        return "Bayer RGGB mosaic (zeros where unsampled)"


class BicubicDownsampling(Degradation):
    """MATLAB bicubic downsampling by ``scale`` (:func:`~tri_panet.data.matlab_resize.bicubic_downsample`).
    ``quantize`` (default) rounds the LR image to 8 bits like the benchmarks' LR PNG files."""

    task = "sr"

    def __init__(self, scale: int, quantize: bool = True):
        self.scale = check_scale(scale)
        self.quantize = bool(quantize)

    def _degrade(self, img, params, generator):
        return bicubic_downsample(img, self.scale, quantize=self.quantize)

    def describe(self, seed: int) -> str:
        rounded = "LR rounded to 8 bits" if self.quantize else "LR not rounded"
        return f"MATLAB bicubic x{self.scale} downsampling, {rounded}"

    def _settings(self) -> dict:
        return {"scale": self.scale, "quantize": self.quantize}
