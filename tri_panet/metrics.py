"""PSNR and SSIM with the conventions of BasicSR / MATLAB used by the published tables.

Per image, in float64: crop ``crop_border`` pixels from every side first, then (with
``y_channel``) convert RGB to the BT.601 studio-range Y of MATLAB ``rgb2ycbcr``, then:

- PSNR = 10 log10(L^2 / MSE) with L = ``data_range`` (inf for identical images);
- SSIM with an 11 x 11 Gaussian window (sigma 1.5), over the valid region only,
  C1 = (0.01 L)^2, C2 = (0.03 L)^2, averaged over the pixels and then the channels.

The metrics are computed on the values as given: nothing is rounded. BasicSR evaluates
images saved as 8 bits; to reproduce it exactly, quantise first
(``tri_panet.data.degradations.quantize``). These equal
``skimage.metrics.peak_signal_noise_ratio`` and ``structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=L)``.
"""

from __future__ import annotations

from numbers import Integral

import torch
import torch.nn.functional as F

from ._checks import check_positive_finite
from .data.degradations import rgb_to_y

__all__ = ["psnr", "ssim"]

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


def _prepare(pred, target, crop_border, y_channel, data_range) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Validate, make [N, C, H, W] float64, crop, convert to Y; returns (pred, target, L)."""
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (3, 4):
            raise ValueError(f"{name} must be [N, C, H, W] or [C, H, W], got shape {tuple(t.shape)}")
        if t.is_complex():
            raise TypeError(f"{name} must be real, got dtype {t.dtype}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if any(n == 0 for n in pred.shape):
        raise ValueError(f"pred and target must not be empty, got shape {tuple(pred.shape)}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, Integral) or crop_border < 0:
        raise ValueError(f"crop_border must be an int >= 0, got {crop_border!r}")
    data_range = check_positive_finite("data_range", data_range)
    x = pred.detach().to(torch.float64)
    y = target.detach().to(device=x.device, dtype=torch.float64)
    if x.dim() == 3:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    h, w = x.shape[-2:]
    if 2 * crop_border >= h or 2 * crop_border >= w:
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
    if crop_border:
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        c = x.shape[1]
        if c == 3:
            # rgb_to_y expects [0, 1]; scale there and back so that data_range=255 works.
            x = rgb_to_y(x / data_range) * data_range
            y = rgb_to_y(y / data_range) * data_range
        elif c != 1:  # one channel is taken to be Y already (as BasicSR does)
            raise ValueError(f"y_channel=True needs 3 (RGB) or 1 (Y) channels, got {c}")
    return x, y, data_range


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    crop_border: int = 0,
    y_channel: bool = False,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, one value per image.

    ``pred``, ``target``: [N, C, H, W] (or [C, H, W]) with values on the scale
    [0, ``data_range``]. ``crop_border`` pixels are removed from each side before the
    optional RGB -> Y conversion (``y_channel``; 1-channel input is taken as Y).
    Returns a float64 tensor [N] (inf where the images are identical).
    """
    x, y, data_range = _prepare(pred, target, crop_border, y_channel, data_range)
    mse = (x - y).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(device) -> torch.Tensor:
    r = _SSIM_WINDOW // 2
    g = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float64, device=device) ** 2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    crop_border: int = 0,
    y_channel: bool = False,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, MATLAB ``ssim_index`` / BasicSR), one
    value per image: 11 x 11 Gaussian window (sigma 1.5), valid region, C1 = (0.01 L)^2,
    C2 = (0.03 L)^2 with L = ``data_range``, mean over pixels then over channels.

    Shapes, ``crop_border`` and ``y_channel`` as :func:`psnr`; after cropping the image
    must be at least 11 x 11. Returns a float64 tensor [N].
    """
    x, y, data_range = _prepare(pred, target, crop_border, y_channel, data_range)
    n, c, h, w = x.shape
    if h < _SSIM_WINDOW or w < _SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} after cropping, got {h}x{w}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    g = _gaussian_window(x.device)
    # The separable Gaussian as two depthwise valid convolutions over all channels.
    wy = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    wx = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, wy, groups=c), wx, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x * mu_x
    syy = blur(y * y) - mu_y * mu_y
    sxy = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)
