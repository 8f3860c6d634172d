"""Float image tensors in [0, 1]: the layout check, 8-bit rounding and the SR crop that the
degradations and the MATLAB resize share."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch

__all__ = ["as_batch", "check_scale", "modcrop", "quantize"]


def as_batch(name: str, img: object, channels: Sequence[int] | None = None) -> tuple[torch.Tensor, bool]:
    """``img`` ([C, H, W] or [N, C, H, W], floating) as [N, C, H, W], and whether it was 3-D.

    ``channels``: the channel counts accepted (None: any). Raises TypeError / ValueError
    naming ``name`` for anything else (not a tensor, integer dtype, wrong rank, an empty
    dimension, a refused channel count).
    """
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


def check_scale(scale: object) -> int:
    """``scale`` as an int >= 1 (bools refused); TypeError / ValueError otherwise."""
    if isinstance(scale, bool) or not isinstance(scale, Integral):
        raise TypeError(f"scale must be an int, got {type(scale).__name__}")
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    return int(scale)


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Round ``img`` (in [0, 1]) to the 8-bit grid k/255, clamping to [0, 1] (half away
    from zero, as MATLAB's and Pillow's conversions to uint8)."""
    return torch.floor(img.clamp(0, 1) * 255 + 0.5) / 255


def modcrop(img: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop the bottom/right of ``img`` ([..., H, W]) so that H and W are multiples of
    ``scale`` (BasicSR's ``modcrop``; the SR benchmarks' HR images are cropped this way).
    ``scale`` 1 returns ``img`` unchanged (a view)."""
    scale = check_scale(scale)
    h, w = img.shape[-2:]
    if h < scale or w < scale:
        raise ValueError(f"image of size {h}x{w} is smaller than scale {scale}")
    return img[..., : h - h % scale, : w - w % scale]
