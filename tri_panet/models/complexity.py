"""Parameters and analytic forward FLOPs of a model (``model_complexity``)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..nn import PyramidAttention, build_pyramid
from ..resize import level_size
from .registry import describe


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (shared modules such as PANet's PReLU count once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def attention_flops(block: PyramidAttention, size: tuple[int, int]) -> int:
    """Forward FLOPs of the attention op inside ``block`` on an H x W input (1x1 convs excluded).

    pairs * (2 * d_qk + 2 * d_v), pairs = H*W * sum_l H_l*W_l (the pyramid's real level sizes),
    d_qk = (channels / reduction) * k^2, d_v = channels * k^2 (PANet: 64 channels, reduction 2,
    k = 3, so 2 * 288 + 2 * 576 = 1728 FLOPs per query-key pair).
    """
    h, w = size
    keys = 0
    for s in block.scales:  # the level sizes build_pyramid produces (scale 1: the map itself)
        keys += math.prod(level_size(h, w, s))
    k2 = block.patch_size**2
    d_qk = block.conv_match_L_base[0].out_channels * k2
    d_v = block.conv_assembly[0].out_channels * k2
    return h * w * keys * (2 * d_qk + 2 * d_v)


def model_complexity(model: nn.Module, size: tuple[int, int]) -> dict:
    """Parameters and forward FLOPs of ``model`` on one [1, C, H, W] input of ``size`` = (H, W).

    Counting (2 FLOPs per multiply-add):
      - every ``nn.Conv2d``: 2 * (C_in / groups) * kh * kw * C_out * H_out * W_out,
        including the attention's 1x1 embeddings (queries at H x W, keys and values at
        every pyramid level);
      - every ``PyramidAttention``'s op: pairs * (2 * d_qk + 2 * d_v) (see ``attention_flops``);
      - not counted: biases, activations, additions, pyramid resampling, pixel shuffle,
        the key normalisation and softmax (all O(pairs) or O(pixels), small beside the above).
    The shapes are traced on the ``meta`` device (a copy of the model; nothing is computed),
    so full-size models cost nothing to count. The attention term grows like (H*W)^2, so
    ``flops_per_megapixel`` (FLOPs / input pixels * 1e6; input = LR image for SR) depends
    on ``size``.

    Also the sizes of the convolutions' feature maps, which bound the memory a run needs
    (:mod:`tri_panet.cost`): ``conv_input_elements``, the elements of every conv's input
    summed (what training keeps for the backward), and ``largest_conv_elements``, the
    largest input + output elements of one conv (one batch element each).

    And ``attention_sizes``: the (H, W) of the map each ``PyramidAttention`` block runs on,
    in ``model.modules()`` order (None for a block the forward does not call): a model
    that attends on a reduced map (the fast family: half the input's side) costs far less
    than its input size suggests.

    Returns dict(params, trainable_params, flops, conv_flops, attention_flops,
    flops_per_megapixel, conv_input_elements, largest_conv_elements, attention_sizes).
    """
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"size must be (H, W) with positive ints, got {size!r}")
    h, w = size
    in_channels = describe(model).n_colors
    if in_channels is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            raise ValueError("cannot tell the model's input channels: give it an n_colors attribute")
        in_channels = first.in_channels

    meta = copy.deepcopy(model).to("meta")
    counts = {"conv": 0, "attention": 0, "inputs": 0, "largest": 0}
    blocks = [m for m in meta.modules() if isinstance(m, PyramidAttention)]
    attention_sizes: list[tuple[int, int] | None] = [None] * len(blocks)

    def conv_hook(mod: nn.Conv2d, inputs, output) -> None:
        kh, kw = mod.kernel_size
        counts["conv"] += (
            2 * (mod.in_channels // mod.groups) * kh * kw * mod.out_channels * output.shape[2] * output.shape[3]
        )
        counts["inputs"] += inputs[0].numel()
        counts["largest"] = max(counts["largest"], inputs[0].numel() + output.numel())

    def attention_forward(block: PyramidAttention, index: int):
        def forward(x: torch.Tensor) -> torch.Tensor:
            # run the embeddings (their convs are counted by the hooks), count the op analytically
            block.conv_match_L_base(x)
            for level in build_pyramid(x, block.scales, block.recompute_scale_factor):
                block.conv_match(level)
                block.conv_assembly(level)
            counts["attention"] += attention_flops(block, (x.shape[2], x.shape[3]))
            attention_sizes[index] = (x.shape[2], x.shape[3])
            return x

        return forward

    for m in meta.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
    for index, block in enumerate(blocks):
        block.forward = attention_forward(block, index)  # instance attribute shadows the class forward
    with torch.no_grad():
        meta(torch.empty(1, in_channels, h, w, device="meta"))
    total = counts["conv"] + counts["attention"]
    return {
        "params": count_parameters(model),
        "trainable_params": count_parameters(model, trainable_only=True),
        "flops": total,
        "conv_flops": counts["conv"],
        "attention_flops": counts["attention"],
        "flops_per_megapixel": total / (h * w) * 1e6,
        "conv_input_elements": counts["inputs"],
        "largest_conv_elements": counts["largest"],
        "attention_sizes": attention_sizes,
    }
