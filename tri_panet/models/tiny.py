"""Tiny pyramid-attention models for training and fine-tuning on modest hardware.

Same layout as PANet (``head`` / ``body`` with ResBlocks around one PyramidAttention and a
closing conv / long skip / ``tail``), much smaller (default 32 features, 8 ResBlocks: 4
before the attention, 4 after, the official 5-level pyramid, reduction 2), plus a global
residual so that the network only learns the correction:

- ``TinyPANet`` (denoise / JPEG / demosaic): ``y = x + net(x)``.
- ``TinySR``: ``y = bicubic_up(x) + net(x)`` with a pixel-shuffle ``Upsampler`` in the tail.

The last conv is zero-initialised, so an untrained model is the identity (or bicubic
upsampling): training starts from the classical baseline rather than from noise.

``down=2`` gives the fast variants (registry ``fast-*``): the image is pixel-unshuffled by 2
(as FFDNet does) so that the head, body and attention run on a half-resolution feature map
with ``4 * n_colors`` input channels, and the tail pixel-shuffles back. Per output pixel
the attention then costs about 16x less (a quarter of the queries, each against a quarter
of the keys) and the convolutions 4x less at the same width, which buys wider features;
the input sides must be multiples of 2 (``restore`` pads them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import DEFAULT_SCALES, PyramidAttention
from .common import (
    ResBlock,
    RestorationModel,
    Upsampler,
    check_image_batch,
    check_int,
    check_resblock_count,
    default_conv,
    model_config,
)


def _body(
    n_feats: int,
    n_resblocks: int,
    reduction: int,
    scales,
    recompute_scale_factor: bool,
    backend: str,
    attention: bool = True,
) -> nn.Sequential:
    """ResBlocks (ReLU) / PyramidAttention / ResBlocks / conv3x3, PANet's body layout; without
    ``attention`` an identity stands in the block's place (the ablation's baseline)."""
    check_int("n_feats", n_feats)
    check_resblock_count(n_resblocks)
    half = n_resblocks // 2
    blocks: list[nn.Module] = [ResBlock(default_conv, n_feats, 3) for _ in range(half)]
    blocks.append(
        PyramidAttention(
            channels=n_feats,
            reduction=reduction,
            scales=scales,
            recompute_scale_factor=recompute_scale_factor,
            backend=backend,
        )
        if attention
        else nn.Identity()
    )
    blocks += [ResBlock(default_conv, n_feats, 3) for _ in range(half)]
    blocks.append(default_conv(n_feats, n_feats, 3))
    return nn.Sequential(*blocks)


def _zero_(conv: nn.Conv2d) -> None:
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _TinyNet(RestorationModel):
    """What the tiny models share: head conv, :func:`_body`, a tail whose last conv starts at
    zero, and ``y = skip(x) + tail(body(head(x)) + head(x))``; subclasses choose the skip."""

    def __init__(
        self,
        scale: int,
        n_colors: int,
        n_feats: int,
        n_resblocks: int,
        reduction: int,
        scales: Sequence[float],
        recompute_scale_factor: bool,
        backend: str,
        down: int = 1,
        attention: bool = True,
    ) -> None:
        super().__init__()
        check_int("n_colors", n_colors)
        if not isinstance(attention, bool):
            raise TypeError(f"attention must be a bool, got {type(attention).__name__}")
        check_int("down", down)
        self.n_colors = n_colors
        self.scale = scale
        self.multiple = down
        self.config = model_config(
            **({"scale": scale} if scale > 1 else {}),  # the constructor arguments of the subclass
            n_colors=n_colors,
            n_feats=n_feats,
            n_resblocks=n_resblocks,
            reduction=reduction,
            scales=tuple(float(s) for s in scales),
            recompute_scale_factor=bool(recompute_scale_factor),
            # Only when used, so the metadata of the full-resolution models stays as it was.
            **({"down": down} if down > 1 else {}),
            **({} if attention else {"attention": False}),
        )
        self.body = _body(n_feats, n_resblocks, reduction, scales, recompute_scale_factor, backend, attention)
        if down == 1:  # the layout (and state-dict names) of the bundled full-resolution weights
            self.head = nn.Sequential(default_conv(n_colors, n_feats, 3))
            upsampler = [Upsampler(default_conv, scale, n_feats)] if scale > 1 else []
            self.tail = nn.Sequential(*upsampler, default_conv(n_feats, n_colors, 3))
        else:  # half (1/down) resolution inside; one pixel shuffle undoes the unshuffle and upscales
            factor = down * scale
            self.head = nn.Sequential(nn.PixelUnshuffle(down), default_conv(n_colors * down * down, n_feats, 3))
            self.tail = nn.Sequential(default_conv(n_feats, n_colors * factor * factor, 3), nn.PixelShuffle(factor))
        _zero_(next(m for m in reversed(self.tail) if isinstance(m, nn.Conv2d)))
        self._attention_index = n_resblocks // 2

    @property
    def attention(self) -> PyramidAttention:
        """The pyramid attention block (ValueError for a model built without one)."""
        block = self.body[self._attention_index]
        if not isinstance(block, PyramidAttention):
            raise ValueError("this model was built with attention=False: it has no attention block")
        return block

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """The image-level skip connection: what an untrained model outputs."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, n_colors, H, W] -> [B, n_colors, H * scale, W * scale]; H, W multiples of ``multiple``."""
        check_image_batch(x, self.n_colors)
        if x.shape[2] % self.multiple or x.shape[3] % self.multiple:
            raise ValueError(
                f"x must have a height and width that are multiples of {self.multiple} (this model "
                f"unshuffles by {self.multiple}), got {tuple(x.shape[2:])}; pad it or use tri_panet.inference.restore"
            )
        h = self.head(x)
        return self.skip(x) + self.tail(self.body(h) + h)


class TinyPANet(_TinyNet):
    """Tiny restoration model: x [B, n_colors, H, W] -> x + net(x), same shape.

    Args:
        n_colors: 3 (colour) or 1 (Y / gray).
        n_feats: feature channels (default 32).
        n_resblocks: even number of ResBlocks around the attention (default 8).
        reduction: attention channel reduction (default 2).
        scales, recompute_scale_factor: attention pyramid (default: the official 5 levels).
        backend: attention backend.
        down: 1 (full resolution inside) or the pixel-unshuffle factor of the fast variants.
        attention: False puts an identity where the attention block stands (ablations).
    """

    def __init__(
        self,
        n_colors: int = 3,
        n_feats: int = 32,
        n_resblocks: int = 8,
        reduction: int = 2,
        scales: Sequence[float] = DEFAULT_SCALES,
        recompute_scale_factor: bool = True,
        backend: str = "auto",
        down: int = 1,
        attention: bool = True,
    ) -> None:
        super().__init__(
            1, n_colors, n_feats, n_resblocks, reduction, scales, recompute_scale_factor, backend, down, attention
        )

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """Identity: the network learns the correction."""
        return x


class TinySR(_TinyNet):
    """Tiny super-resolution model: x [B, n_colors, H, W] -> [B, n_colors, H*scale, W*scale].

    ``y = bicubic(x, scale) + tail(body(head(x)) + head(x))`` with ``tail`` = Upsampler
    (conv + PixelShuffle) then conv3x3 n_feats -> n_colors (with ``down`` > 1: one conv and
    one PixelShuffle by ``down * scale``). Arguments as :class:`TinyPANet`, plus ``scale``
    (2, 3, 4, ...).
    """

    def __init__(
        self,
        scale: int = 2,
        n_colors: int = 3,
        n_feats: int = 32,
        n_resblocks: int = 8,
        reduction: int = 2,
        scales: Sequence[float] = DEFAULT_SCALES,
        recompute_scale_factor: bool = True,
        backend: str = "auto",
        down: int = 1,
        attention: bool = True,
    ) -> None:
        check_int("scale", scale, minimum=2)  # scale 1 is TinyPANet
        super().__init__(
            scale, n_colors, n_feats, n_resblocks, reduction, scales, recompute_scale_factor, backend, down, attention
        )

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """Bicubic upsampling by ``scale``."""
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
