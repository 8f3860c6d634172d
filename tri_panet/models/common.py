"""EDSR-style building blocks with the official names: ``default_conv``, ``MeanShift``,
``ResBlock``, ``Upsampler`` (the project specification, section 3), and :class:`RestorationModel`, the base of
the registry's networks.

Module and parameter names (``body.0``, ``body.1``, ...) follow the official EDSR/PANet
code so that official state dicts load with ``strict=True``. Unlike the official code, no
module is a mutable default argument: where sharing is wanted (PANet's single PReLU) the
caller passes the shared module explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

#: The DIV2K RGB mean the official EDSR/PANet code subtracts (rgb_range 1).
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum`` (bools refused), else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_resblock_count(n_resblocks: object) -> int:
    """``n_resblocks`` as a non-negative even int: half the ResBlocks go before the attention, half after."""
    check_int("n_resblocks", n_resblocks, minimum=0)
    if n_resblocks % 2:
        raise ValueError(f"n_resblocks must be even (half before, half after the attention), got {n_resblocks}")
    return n_resblocks


def default_conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True
) -> nn.Conv2d:
    """The official ``default_conv``: a k x k convolution with "same" zero padding k // 2."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, stride=stride, bias=bias)


class RestorationModel(nn.Module):
    """Base of the registry's networks: an image [B, n_colors, H, W] in [0, 1] goes in,
    [B, n_colors, H * scale, W * scale] comes out. ``tri_panet.models.describe`` reads
    these attributes; the subclasses set ``scale``, ``n_colors`` and ``config`` (their
    JSON-able constructor arguments, which ``save_weights`` stores)."""

    #: The registry name, set by ``create`` (None for a model built from its class).
    model_name: str | None = None
    #: H and W of an input must be multiples of this (``restore`` pads up to it).
    multiple: int = 1
    scale: int
    n_colors: int
    config: dict


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv adding ``sign * rgb_range * mean / std`` to each RGB channel.

    [B, 3, H, W] -> [B, 3, H, W]. Its ``weight`` [3, 3, 1, 1] and ``bias`` [3] are in the
    state dict (official name), with ``requires_grad=False``.
    """

    def __init__(
        self,
        rgb_range: float = 1.0,
        rgb_mean: Sequence[float] = DIV2K_RGB_MEAN,
        rgb_std: Sequence[float] = (1.0, 1.0, 1.0),
        sign: int = -1,
    ) -> None:
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std, dtype=torch.float32)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1))
            self.bias.copy_(sign * float(rgb_range) * torch.tensor(rgb_mean, dtype=torch.float32) / std)
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """EDSR residual block: ``x + res_scale * conv(act(conv(x)))``, [B, C, H, W] -> same.

    The convolutions are ``body.0`` and ``body.2``, the activation ``body.1`` (official names).
    ``act`` is used as given, so one module can be shared by several blocks (PANet's quirk);
    ``None`` gives a fresh ``ReLU``.
    """

    def __init__(
        self,
        conv: Callable[..., nn.Module],
        n_feats: int,
        kernel_size: int,
        bias: bool = True,
        act: nn.Module | None = None,
        res_scale: float = 1.0,
    ) -> None:
        super().__init__()
        act = nn.ReLU(inplace=True) if act is None else act
        self.body = nn.Sequential(
            conv(n_feats, n_feats, kernel_size, bias=bias),
            act,
            conv(n_feats, n_feats, kernel_size, bias=bias),
        )
        self.res_scale = float(res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> [B, C, H, W]."""
        res = self.body(x)
        if self.res_scale != 1.0:
            res = res * self.res_scale
        return res + x


def _scale_factors(scale: int) -> list[int]:
    """Pixel-shuffle steps for ``scale``: [2] * log2(scale) for powers of two, [3] for 3."""
    check_int("scale", scale)
    if scale == 3:
        return [3]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * (scale.bit_length() - 1)
    raise ValueError(f"scale must be a power of two or 3, got {scale}")


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler: per factor f, conv C -> f*f*C then PixelShuffle(f).

    [B, C, H, W] -> [B, C, H*scale, W*scale] for scale 2^n (convs at ``0``, ``2``, ...) or 3.
    (The official PANet copy passes ``bias`` where ``stride`` is expected; this one does not.)
    """

    def __init__(self, conv: Callable[..., nn.Module], scale: int, n_feats: int, bias: bool = True) -> None:
        layers: list[nn.Module] = []
        for f in _scale_factors(scale):
            layers.append(conv(n_feats, f * f * n_feats, 3, bias=bias))
            layers.append(nn.PixelShuffle(f))
        super().__init__(*layers)
        self.scale = scale


def model_config(**kwargs) -> dict:
    """A JSON-friendly copy of constructor arguments (tuples become lists)."""
    out = {}
    for k, v in kwargs.items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Make every ``PyramidAttention`` inside ``model`` use ``backend``; returns ``model``."""
    from ..nn import PyramidAttention
    from ..ops import resolve_backend

    resolve_backend(backend, torch.empty(0))  # reject unknown names before touching anything
    for m in model.modules():
        if isinstance(m, PyramidAttention):
            m.backend = backend
    return model


def check_image_batch(x: object, n_colors: int) -> None:
    """Raise unless ``x`` is a [B, n_colors, H, W] floating tensor (models' forward check)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != n_colors:
        raise ValueError(f"x must be a [B, {n_colors}, H, W] tensor (n_colors={n_colors}), got shape {tuple(x.shape)}")
