"""Where a query attends: the softmax weights of a few query positions over every pyramid level.

:func:`attention_weights` computes, for the chosen queries of a
:class:`~tri_panet.nn.PyramidAttention` block only, the weights the reference path
(:mod:`tri_panet.ops.reference`) would give them: the zero-padded k x k query patch
against every L2-normalised key patch (norms floored at ``block.key_eps``) of every level,
times ``block.softmax_scale``, one softmax over the keys of all levels together. Its cost
is that of convolving each level with n query filters, [n, keys] scores, never the
[keys, H, W] score tensor of the whole image.

:func:`attention_input` runs a model up to its attention block and returns the block's
input features; :func:`feature_position` maps image pixels to feature-map cells (models
that pixel-unshuffle before the attention have a smaller feature map than the image).
The picture is drawn by :mod:`tri_panet.attention_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .inference import restore
from .nn import PyramidAttention

__all__ = ["attention_input", "attention_weights", "feature_position", "find_attention"]


def attention_weights(
    block: PyramidAttention, x: torch.Tensor, positions: Sequence[tuple[int, int]]
) -> list[torch.Tensor]:
    """Attention weights of the queries at ``positions`` over the pyramid of ``x``.

    Args:
        block: the attention block (its embeddings, scales, patch size, softmax scale, key floor).
        x: the block's input features [1, channels, H, W] (or [channels, H, W]).
        positions: (y, x) feature-map cells of the queries, 0 <= y < H, 0 <= x < W.

    Returns one float32 tensor per pyramid level l (``block.scales`` order), [n_queries,
    H_l, W_l]: the weight each query gives to the key patch centred at each cell of level
    l. For every query the weights of all levels sum to 1.
    """
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one feature map [1, C, H, W] or [C, H, W], got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    positions = [(int(y), int(x_)) for y, x_ in positions]
    if not positions:
        raise ValueError("positions must hold at least one (y, x) query")
    for y, x_ in positions:
        if not (0 <= y < height and 0 <= x_ < width):
            raise ValueError(f"query (y, x) = ({y}, {x_}) is outside the {height}x{width} feature map")
    query, keys, _ = block.embed(x)
    query, keys = query.float(), [k.float() for k in keys]  # the reference computes half precision in float32
    k = block.patch_size
    r = k // 2
    # The query patches as conv filters [n, Cq, k, k], zero outside the map like the reference's padding.
    padded = F.pad(query, (r, r, r, r))
    filters = torch.stack([padded[0, :, y : y + k, x_ : x_ + k] for y, x_ in positions])
    box = torch.ones(1, 1, k, k, dtype=query.dtype, device=query.device)
    logits = []
    for key in keys:
        dots = F.conv2d(key, filters, padding=r)[0]  # [n, H_l, W_l]: <query patch, key patch at each cell>
        norms = F.conv2d(key.pow(2).sum(1, keepdim=True), box, padding=r)[0].sqrt()  # [1, H_l, W_l]
        logits.append(dots / norms.clamp_min(block.key_eps) * block.softmax_scale)
    weights = torch.cat([s.flatten(1) for s in logits], dim=1).softmax(dim=1)  # one softmax over all levels
    sizes = [s[0].numel() for s in logits]
    return [w.reshape(-1, *s.shape[1:]) for w, s in zip(weights.split(sizes, dim=1), logits)]


def find_attention(model: nn.Module) -> PyramidAttention:
    """The model's (first) :class:`~tri_panet.nn.PyramidAttention` block; ValueError if it has none."""
    for module in model.modules() if isinstance(model, nn.Module) else ():
        if isinstance(module, PyramidAttention):
            return module
    name = getattr(model, "model_name", None) or type(model).__name__
    raise ValueError(f"model {name} has no PyramidAttention block: there is no attention to map")


class _Reached(Exception):
    """Raised by the hook to stop the forward pass at the attention block."""


def attention_input(model: nn.Module, image: torch.Tensor) -> tuple[PyramidAttention, torch.Tensor, tuple[int, int]]:
    """Run ``model`` on ``image`` [C, H, W] in [0, 1] (as :func:`~tri_panet.inference.restore`
    does: padded to the model's size multiple, eval mode, no gradients) up to its attention
    block, and stop there.

    Returns (the block, its input features [1, channels, h, w], the (height, width) of the
    padded image the model took), the last for mapping pixels to cells.
    """
    block = find_attention(model)
    seen = {}

    def model_input(module, args):
        seen["size"] = tuple(args[0].shape[-2:])

    def block_input(module, args):
        seen["features"] = args[0].detach()
        raise _Reached

    hooks = [model.register_forward_pre_hook(model_input), block.register_forward_pre_hook(block_input)]
    try:
        restore(model, image)
    except _Reached:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    if "features" not in seen:
        raise ValueError("the model returned without running its attention block")
    return block, seen["features"], seen["size"]


def feature_position(
    position: tuple[int, int], image_size: tuple[int, int], feature_size: tuple[int, int]
) -> tuple[int, int]:
    """The feature-map cell (y, x) that holds image pixel ``position`` (y, x).

    ``image_size``: (height, width) of the image the model took; ``feature_size``: of the
    attention's feature map. By the ratio of the sizes (1 for most models, 1/2 for a model
    that pixel-unshuffles by 2): the cell under the pixel's centre.
    """
    return tuple(min(int((p + 0.5) * f / i), f - 1) for p, i, f in zip(position, image_size, feature_size))
