"""Bicubic down-scaling for the pyramid, as a custom op that the compiler keeps whole.

Why not call ``F.interpolate`` directly: inductor (CPU, torch 2.13) fuses the backward of
several bicubic resizes of one tensor into a single kernel and reads some of the
scatter-add buffers before it has filled them, so ``x.grad`` of a compiled 4-5 level
pyramid is silently wrong (docs/KNOWN_ISSUES.md has the minimal reproduction). Behind a
custom op the forward and backward run PyTorch's own eager kernels, so results are
bit-identical to ``F.interpolate`` in eager mode and compiled graphs stay correct.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("tri_panet::bicubic_resize", mutates_args=())
def _bicubic_resize(x: torch.Tensor, height: int, width: int, scale: float | None) -> torch.Tensor:
    if scale is None:
        return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False, recompute_scale_factor=False)


@_bicubic_resize.register_fake
def _bicubic_resize_fake(x, height, width, scale):
    return x.new_empty(x.shape[0], x.shape[1], height, width)


@torch.library.custom_op("tri_panet::bicubic_resize_backward", mutates_args=())
def _bicubic_resize_backward(grad: torch.Tensor, input_size: list[int], scale: float | None) -> torch.Tensor:
    return torch.ops.aten.upsample_bicubic2d_backward(
        grad.contiguous(), list(grad.shape[2:]), input_size, False, scale, scale
    )


@_bicubic_resize_backward.register_fake
def _bicubic_resize_backward_fake(grad, input_size, scale):
    return grad.new_empty(input_size)


def _setup_context(ctx, inputs, output):
    x, _, _, scale = inputs
    ctx.input_size, ctx.scale = list(x.shape), scale


def _backward(ctx, grad):
    return _bicubic_resize_backward(grad, ctx.input_size, ctx.scale), None, None, None


_bicubic_resize.register_autograd(_backward, setup_context=_setup_context)


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size of a map of height x width resized by ``scale``, as ``F.interpolate`` computes it:
    (floor(float(height) * scale), floor(float(width) * scale))."""
    return int(float(height) * scale), int(float(width) * scale)


def bicubic_downscale(x: torch.Tensor, scale: float, recompute_scale_factor: bool = True) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False, ...)``, same result.

    x [B, C, H, W] -> [B, C, *level_size(H, W, scale)]. ``recompute_scale_factor`` as in
    ``F.interpolate``: True samples with the ratio of sizes, False with 1 / scale.
    """
    height, width = level_size(x.shape[2], x.shape[3], scale)
    return _bicubic_resize(x, height, width, None if recompute_scale_factor else float(scale))
