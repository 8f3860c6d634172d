"""PA-EDSR: EDSR with one pyramid attention block, for super-resolution (the project specification, section 3).

State-dict names equal the official ``SR/code/model/paedsr.py``:

- ``sub_mean`` / ``add_mean``: MeanShift (applied: input minus the DIV2K mean, output plus it)
- ``head.0``: conv3x3 3 -> n_feats
- ``body.0 .. body.{n/2-1}``: ResBlocks (ReLU, res_scale); ``body.{n/2}``: PyramidAttention
  (reduction 8, res_scale); ``body.{n/2+1} .. body.{n}``: ResBlocks; ``body.{n+1}``: conv3x3
- ``tail.0``: Upsampler (``tail.0.0``, ``tail.0.2``, ... convs), ``tail.1``: conv3x3 n_feats -> 3
- ``msa``: the SAME attention module as ``body.{n/2}``, so the state dict holds its
  weights twice, under ``msa.*`` and ``body.{n/2}.*``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..nn import DEFAULT_SCALES, PyramidAttention
from .common import (
    MeanShift,
    ResBlock,
    RestorationModel,
    Upsampler,
    check_image_batch,
    check_int,
    check_resblock_count,
    default_conv,
    model_config,
)


class PAEDSR(RestorationModel):
    """PA-EDSR super-resolution: x [B, 3, H, W] in [0, rgb_range] -> [B, 3, H*scale, W*scale].

    Args:
        scale: upscaling factor, a power of two or 3 (official 2, 3, 4).
        n_feats: feature channels (official 256).
        n_resblocks: even number of ResBlocks, half on each side of the attention (official 32).
        res_scale: residual scale of the ResBlocks and of the attention's skip (official 0.1).
        reduction: channel reduction of the attention's queries and keys (official 8).
        n_colors: must be 3 (the MeanShift is RGB); kept for a uniform model interface.
        scales, recompute_scale_factor: attention pyramid (see ``tri_panet.nn``).
        rgb_range: image value range (official 1).
        backend: attention backend.
    """

    def __init__(
        self,
        scale: int = 2,
        n_feats: int = 256,
        n_resblocks: int = 32,
        res_scale: float = 0.1,
        reduction: int = 8,
        n_colors: int = 3,
        scales: Sequence[float] = DEFAULT_SCALES,
        recompute_scale_factor: bool = True,
        rgb_range: float = 1.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_int("n_feats", n_feats)
        check_resblock_count(n_resblocks)
        if n_colors != 3:
            raise ValueError(f"n_colors must be 3 for PAEDSR (its MeanShift is RGB), got {n_colors!r}")
        self.n_colors = 3
        self.scale = scale
        self.config = model_config(
            scale=scale,
            n_feats=n_feats,
            n_resblocks=n_resblocks,
            res_scale=float(res_scale),
            reduction=reduction,
            n_colors=3,
            scales=tuple(float(s) for s in scales),
            recompute_scale_factor=bool(recompute_scale_factor),
            rgb_range=float(rgb_range),
        )
        # Same registration order as the official module: sub_mean, msa, add_mean, head, body, tail.
        self.sub_mean = MeanShift(rgb_range)
        self.msa = PyramidAttention(
            channels=n_feats,
            reduction=reduction,
            scales=scales,
            res_scale=res_scale,
            recompute_scale_factor=recompute_scale_factor,
            backend=backend,
        )
        half = n_resblocks // 2
        body: list[nn.Module] = [
            ResBlock(default_conv, n_feats, 3, act=nn.ReLU(True), res_scale=res_scale) for _ in range(half)
        ]
        body.append(self.msa)
        body += [ResBlock(default_conv, n_feats, 3, act=nn.ReLU(True), res_scale=res_scale) for _ in range(half)]
        body.append(default_conv(n_feats, n_feats, 3))
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(default_conv(3, n_feats, 3))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(Upsampler(default_conv, scale, n_feats), default_conv(n_feats, 3, 3))

    @property
    def attention(self) -> PyramidAttention:
        """The pyramid attention block (also ``msa`` and ``body.<n_resblocks/2>``)."""
        return self.msa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> [B, 3, H*scale, W*scale]."""
        check_image_batch(x, 3)
        h = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(h) + h))
