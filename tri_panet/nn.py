"""``PyramidAttention``: the PANet block, as the official code builds it, loading official state dicts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_patch_size, check_positive_finite, check_positive_int, check_scales
from .ops import pyramid_attention, resolve_backend
from .resize import bicubic_downscale, level_size

#: The official pyramid, computed as the official code does: 1.0, 0.9, 0.8, 0.7, 0.6.
DEFAULT_SCALES = tuple(1 - i / 10 for i in range(5))


def build_pyramid(x: torch.Tensor, scales: Sequence[float], recompute_scale_factor: bool = True) -> list[torch.Tensor]:
    """Bicubic pyramid of ``x`` [B, C, H, W]: one map per scale, floor(H * s) x floor(W * s).

    Scale 1 returns ``x`` itself. ``recompute_scale_factor=True`` resamples with the ratio
    in/out, as PyTorch 1.1 did when the official checkpoints were trained; False resamples
    with 1/s, as the official code does on PyTorch >= 1.6.
    """
    levels = []
    for s in scales:
        if s == 1:
            levels.append(x)
            continue
        size = level_size(x.shape[2], x.shape[3], s)
        if min(size) < 1:
            raise ValueError(
                f"x of spatial size {tuple(x.shape[2:])} is too small for pyramid scale {s}: "
                f"the level would be {size}; use a larger input or fewer levels"
            )
        levels.append(bicubic_downscale(x, s, recompute_scale_factor))
    return levels


def _conv1x1_prelu(in_channels: int, out_channels: int) -> nn.Sequential:
    """The official ``BasicBlock(conv, in, out, 1, bn=False, act=nn.PReLU())``: names ``0.*``, ``1.weight``."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=True), nn.PReLU())


class PyramidAttention(nn.Module):
    """PANet's pyramid attention block: ``y = attention(x) + res_scale * x``.

    x [B, channels, H, W] -> y [B, channels, H, W]. Queries, keys and values are 1x1 conv +
    PReLU embeddings of ``x`` (queries and keys with ``channels // reduction`` channels),
    keys and values taken from a bicubic pyramid of ``x`` at ``scales``. Parameter and buffer
    names equal the official ``PyramidAttention``, so official state dicts load strictly.
    """

    def __init__(
        self,
        channels: int = 64,
        reduction: int = 2,
        scales: Sequence[float] = DEFAULT_SCALES,
        patch_size: int = 3,
        softmax_scale: float = 10.0,
        res_scale: float = 1.0,
        recompute_scale_factor: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("reduction", reduction)
        if channels % reduction:
            raise ValueError(f"channels ({channels}) must be divisible by reduction ({reduction})")
        if not isinstance(res_scale, (int, float)) or isinstance(res_scale, bool):
            raise TypeError(f"res_scale must be a real number, got {type(res_scale).__name__}")
        self.channels = channels
        self.scales = check_scales(scales)
        self.patch_size = check_patch_size(patch_size)
        self.softmax_scale = check_positive_finite("softmax_scale", softmax_scale)
        self.res_scale = float(res_scale)
        self.recompute_scale_factor = bool(recompute_scale_factor)
        resolve_backend(backend, torch.empty(0))  # reject unknown names now, not at the first forward
        self.backend = backend
        self.conv_match_L_base = _conv1x1_prelu(channels, channels // reduction)
        self.conv_match = _conv1x1_prelu(channels, channels // reduction)
        self.conv_assembly = _conv1x1_prelu(channels, channels)
        # Kept for checkpoint compatibility; the op reads the constant (a Python float, so
        # torch.compile sees no data-dependent value).
        self.register_buffer("escape_NaN", torch.tensor([1e-4]))
        self.key_eps = 1e-4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, channels, H, W] -> [B, channels, H, W]."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a [B, {self.channels}, H, W] tensor, got {shape}")
        query, keys, values = self.embed(x)
        attended = pyramid_attention(
            query,
            keys,
            values,
            patch_size=self.patch_size,
            softmax_scale=self.softmax_scale,
            key_eps=self.key_eps,
            fold_divisor=4.0,
            backend=self.backend,
        )
        return attended + self.res_scale * x

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The op's inputs for ``x`` [B, channels, H, W]: (query [B, channels // reduction, H, W],
        keys, values), keys and values one map per pyramid level (query / key and value embeddings
        of x and of its bicubic pyramid)."""
        pyramid = build_pyramid(x, self.scales, self.recompute_scale_factor)
        return (
            self.conv_match_L_base(x),
            [self.conv_match(level) for level in pyramid],
            [self.conv_assembly(level) for level in pyramid],
        )

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, scales={self.scales}, patch_size={self.patch_size}, "
            f"softmax_scale={self.softmax_scale}, res_scale={self.res_scale}, backend={self.backend!r}"
        )
