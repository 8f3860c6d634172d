"""Restoration models built on pyramid attention.

- Published networks with official state-dict names: :class:`PANet` (denoise / demosaic /
  JPEG) and :class:`PAEDSR` (super-resolution).
- Tiny variants for modest hardware: :class:`TinyPANet`, :class:`TinySR`.
- Registry: :func:`create`, :func:`available_models`, :func:`model_info`; the descriptor of
  a model instance: :func:`describe` -> :class:`ModelInfo` (name, task, scale, channels).
- Weights: :func:`save_weights`, :func:`load_weights`, :func:`load_pretrained` (safetensors;
  official ``.pth`` through ``torch.load(weights_only=True)``), and :func:`build_model`,
  which picks among them (fresh, from a file, bundled).
- :func:`model_complexity`: parameters and analytic FLOPs.
"""

from .common import (
    MeanShift,
    ResBlock,
    RestorationModel,
    Upsampler,
    default_conv,
    set_backend,
)
from .complexity import attention_flops, count_parameters, model_complexity
from .loading import build_model
from .paedsr import PAEDSR
from .panet import PANet
from .registry import (
    ModelInfo,
    available_models,
    create,
    describe,
    get_spec,
    model_info,
)
from .tiny import TinyPANet, TinySR
from .weights import (
    bundled_weights,
    copy_matching,
    load_pretrained,
    load_state_file,
    load_weights,
    read_metadata,
    save_weights,
)

__all__ = [
    "PAEDSR",
    "MeanShift",
    "ModelInfo",
    "PANet",
    "ResBlock",
    "RestorationModel",
    "TinyPANet",
    "TinySR",
    "Upsampler",
    "attention_flops",
    "available_models",
    "build_model",
    "bundled_weights",
    "copy_matching",
    "count_parameters",
    "create",
    "default_conv",
    "describe",
    "get_spec",
    "load_pretrained",
    "load_state_file",
    "load_weights",
    "model_complexity",
    "model_info",
    "read_metadata",
    "save_weights",
    "set_backend",
]
