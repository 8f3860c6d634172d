"""PANet for denoising, demosaicing and JPEG artefact removal (the project specification, section 3).

State-dict names equal the official ``DN_RGB/CAR/Demosaic`` ``PANET``, so the published
checkpoints load with ``strict=True``:

- ``head.0``: conv3x3 n_colors -> n_feats
- ``body.0 .. body.{n/2-1}``: ResBlocks; ``body.{n/2}``: PyramidAttention;
  ``body.{n/2+1} .. body.{n}``: ResBlocks; ``body.{n+1}``: conv3x3 n_feats -> n_feats
- ``tail.0``: conv3x3 n_feats -> n_colors
- ``sub_mean`` / ``add_mean``: MeanShift modules that exist in the state dict but, as in
  the official forward, are not applied.

Quirk kept on purpose: in the official code every ResBlock receives the same PReLU (a
mutable default argument), so all of them share ONE parameter, which the state dict
repeats as ``body.<i>.body.1.weight``. Here the sharing is explicit.
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
    check_image_batch,
    check_int,
    check_resblock_count,
    default_conv,
    model_config,
)


class PANet(RestorationModel):
    """The published PANet restoration network: x [B, n_colors, H, W] -> [B, n_colors, H, W].

    ``y = tail(body(head(x)) + head(x))``; there is no image-level residual (as official).
    Inputs are images in [0, rgb_range] (the official models use rgb_range 1).

    Args:
        n_colors: 3 (colour denoising, demosaicing) or 1 (JPEG on the Y channel).
        n_feats: feature channels (official 64).
        n_resblocks: even number of ResBlocks, half before and half after the attention (official 80).
        res_scale: residual scale of the ResBlocks (official 1).
        reduction: channel reduction of the attention's queries and keys (official 2).
        scales: pyramid scales of the attention (official 1.0 ... 0.6).
        recompute_scale_factor: pyramid resampling rule (see ``tri_panet.nn.build_pyramid``).
        rgb_range: value range the (unused) MeanShift modules are built for.
        backend: attention backend (``"auto"``, ``"torch"``, ``"triton"``, ...).
    """

    def __init__(
        self,
        n_colors: int = 3,
        n_feats: int = 64,
        n_resblocks: int = 80,
        res_scale: float = 1.0,
        reduction: int = 2,
        scales: Sequence[float] = DEFAULT_SCALES,
        recompute_scale_factor: bool = True,
        rgb_range: float = 1.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_int("n_colors", n_colors)
        check_int("n_feats", n_feats)
        check_resblock_count(n_resblocks)
        self.n_colors = n_colors
        self.scale = 1
        self.config = model_config(
            n_colors=n_colors,
            n_feats=n_feats,
            n_resblocks=n_resblocks,
            res_scale=float(res_scale),
            reduction=reduction,
            scales=tuple(float(s) for s in scales),
            recompute_scale_factor=bool(recompute_scale_factor),
            rgb_range=float(rgb_range),
        )
        # Registration order follows the official module (sub_mean, head, body, tail, add_mean
        # differ only in order, which strict loading ignores).
        self.sub_mean = MeanShift(rgb_range)
        attention = PyramidAttention(
            channels=n_feats,
            reduction=reduction,
            scales=scales,
            res_scale=1.0,
            recompute_scale_factor=recompute_scale_factor,
            backend=backend,
        )
        shared_act = nn.PReLU()  # ONE PReLU for all ResBlocks: the official checkpoints' layout
        half = n_resblocks // 2
        body: list[nn.Module] = [
            ResBlock(default_conv, n_feats, 3, act=shared_act, res_scale=res_scale) for _ in range(half)
        ]
        body.append(attention)
        body += [ResBlock(default_conv, n_feats, 3, act=shared_act, res_scale=res_scale) for _ in range(half)]
        body.append(default_conv(n_feats, n_feats, 3))
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(default_conv(n_colors, n_feats, 3))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(default_conv(n_feats, n_colors, 3))
        self._attention_index = half

    @property
    def attention(self) -> PyramidAttention:
        """The pyramid attention block (``body.<n_resblocks/2>``)."""
        return self.body[self._attention_index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, n_colors, H, W] -> [B, n_colors, H, W] (H, W >= 2 for the default pyramid)."""
        check_image_batch(x, self.n_colors)
        h = self.head(x)
        return self.tail(self.body(h) + h)
