"""Model registry (``create``, ``available_models``, ``model_info``) and ``model_complexity``.

Every registered name maps to a class and its default configuration; ``create(name,
**overrides)`` builds it and records ``model.model_name`` and ``model.config`` (the
JSON-able constructor arguments without ``backend``), which ``save_weights`` stores so that
``load_weights(path)`` can rebuild the model.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn import PyramidAttention, build_pyramid
from ..resize import level_size
from .paedsr import PAEDSR
from .panet import PANet
from .tiny import TinyPANet, TinySR

#: Classes ``load_weights`` may rebuild from a file's metadata (by class name).
MODEL_CLASSES: dict[str, type[nn.Module]] = {c.__name__: c for c in (PANet, PAEDSR, TinyPANet, TinySR)}


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: the class, its defaults and what it is for."""

    name: str
    cls: type
    task: str  # "denoise", "demosaic", "jpeg" or "sr"
    description: str
    defaults: dict = field(default_factory=dict)

    @property
    def n_colors(self) -> int:
        return self.defaults.get("n_colors", _default_arg(self.cls, "n_colors"))

    @property
    def scale(self) -> int:
        return self.defaults.get("scale", _default_arg(self.cls, "scale") or 1)


def _default_arg(cls: type, name: str):
    p = inspect.signature(cls.__init__).parameters.get(name)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


_REGISTRY: dict[str, ModelSpec] = {}


def _register(spec: ModelSpec) -> None:
    _REGISTRY[spec.name] = spec


_register(ModelSpec("panet-denoise", PANet, "denoise", "Published PANet, colour AWGN denoising (64 feats, 80 ResBlocks)", {"n_colors": 3}))
_register(ModelSpec("panet-demosaic", PANet, "demosaic", "Published PANet, Bayer RGGB demosaicing (64 feats, 80 ResBlocks)", {"n_colors": 3}))
_register(ModelSpec("panet-jpeg", PANet, "jpeg", "Published PANet, JPEG artefact removal on the Y channel (1 colour)", {"n_colors": 1}))
for _s in (2, 3, 4):
    _register(ModelSpec(f"paedsr-x{_s}", PAEDSR, "sr", f"Published PA-EDSR x{_s} super-resolution (256 feats, 32 ResBlocks)", {"scale": _s}))
_register(ModelSpec("tiny-denoise", TinyPANet, "denoise", "Tiny PANet (32 feats, 8 ResBlocks), colour denoising, global residual", {"n_colors": 3}))
_register(ModelSpec("tiny-jpeg", TinyPANet, "jpeg", "Tiny PANet (32 feats, 8 ResBlocks), JPEG on the Y channel, global residual", {"n_colors": 1}))
_register(ModelSpec("tiny-demosaic", TinyPANet, "demosaic", "Tiny PANet (32 feats, 8 ResBlocks), RGGB demosaicing, global residual", {"n_colors": 3}))
for _s in (2, 3, 4):
    _register(ModelSpec(f"tiny-sr-x{_s}", TinySR, "sr", f"Tiny SR x{_s} (32 feats, 8 ResBlocks), pixel-shuffle tail + bicubic skip", {"scale": _s}))


def available_models() -> tuple[str, ...]:
    """The registered model names."""
    return tuple(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; ValueError listing the names if it is unknown."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def model_info(name: str) -> dict:
    """What ``name`` is: dict(name, task, n_colors, scale, description, class, defaults)."""
    spec = get_spec(name)
    return {
        "name": spec.name,
        "task": spec.task,
        "n_colors": spec.n_colors,
        "scale": spec.scale,
        "description": spec.description,
        "class": spec.cls.__name__,
        "defaults": dict(spec.defaults),
    }


def create(name: str, **overrides) -> nn.Module:
    """Build the registered model ``name`` with constructor ``overrides`` (e.g. backend="torch").

    Unknown names raise ValueError, unknown override names TypeError (both list the choices).
    The model gets ``model_name`` = name; ``model.config`` holds its full configuration.
    """
    spec = get_spec(name)
    params = inspect.signature(spec.cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError(f"{name} ({spec.cls.__name__}) got unknown argument(s) {unknown}; accepted: {accepted}")
    model = spec.cls(**{**spec.defaults, **overrides})
    model.model_name = name
    return model


# --------------------------------------------------------------------------------------
# Complexity
# --------------------------------------------------------------------------------------


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (shared modules such as PANet's PReLU count once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def attention_flops(block: PyramidAttention, size: tuple[int, int]) -> int:
    """Forward FLOPs of the attention op inside ``block`` on an H x W input (1x1 convs excluded).

    pairs * (2 * d_qk + 2 * d_v), pairs = H*W * sum_l H_l*W_l (the pyramid's real level sizes),
    d_qk = (channels / reduction) * k^2, d_v = channels * k^2 (SPEC section 1: 1728 for PANet).
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

    Returns dict(params, trainable_params, flops, conv_flops, attention_flops, flops_per_megapixel).
    """
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"size must be (H, W) with positive ints, got {size!r}")
    h, w = size
    in_channels = getattr(model, "n_colors", None)
    if in_channels is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            raise ValueError("cannot tell the model's input channels: give it an n_colors attribute")
        in_channels = first.in_channels

    meta = copy.deepcopy(model).to("meta")
    counts = {"conv": 0, "attention": 0}

    def conv_hook(mod: nn.Conv2d, inputs, output) -> None:
        kh, kw = mod.kernel_size
        counts["conv"] += 2 * (mod.in_channels // mod.groups) * kh * kw * mod.out_channels * output.shape[2] * output.shape[3]

    def attention_forward(block: PyramidAttention):
        def forward(x: torch.Tensor) -> torch.Tensor:
            # run the embeddings (their convs are counted by the hooks), count the op analytically
            block.conv_match_L_base(x)
            for level in build_pyramid(x, block.scales, block.recompute_scale_factor):
                block.conv_match(level)
                block.conv_assembly(level)
            counts["attention"] += attention_flops(block, (x.shape[2], x.shape[3]))
            return x

        return forward

    for m in meta.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, PyramidAttention):
            m.forward = attention_forward(m)  # instance attribute shadows the class forward
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
    }
