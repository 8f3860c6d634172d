"""Restoration models built on pyramid attention.

- Published networks with official state-dict names: :class:`PANet` (denoise / demosaic /
  JPEG) and :class:`PAEDSR` (super-resolution).
- Tiny variants for modest hardware: :class:`TinyPANet`, :class:`TinySR`.
- Registry: :func:`create`, :func:`available_models`, :func:`model_info`.
- Weights: :func:`save_weights`, :func:`load_weights`, :func:`load_pretrained` (safetensors;
  official ``.pth`` through ``torch.load(weights_only=True)``).
- :func:`model_complexity`: parameters and analytic FLOPs.
"""

from .common import MeanShift, ResBlock, Upsampler, default_conv, set_backend
from .paedsr import PAEDSR
from .panet import PANet
from .registry import (
    attention_flops,
    available_models,
    count_parameters,
    create,
    model_complexity,
    model_info,
)
from .tiny import TinyPANet, TinySR
from .weights import (
    bundled_weights,
    load_pretrained,
    load_state_file,
    load_weights,
    read_metadata,
    save_weights,
)

__all__ = [
    "PANet",
    "PAEDSR",
    "TinyPANet",
    "TinySR",
    "MeanShift",
    "ResBlock",
    "Upsampler",
    "default_conv",
    "set_backend",
    "create",
    "available_models",
    "model_info",
    "model_complexity",
    "count_parameters",
    "attention_flops",
    "save_weights",
    "load_weights",
    "load_state_file",
    "read_metadata",
    "load_pretrained",
    "bundled_weights",
]
