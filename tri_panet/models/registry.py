"""Model registry (``create``, ``available_models``, ``model_info``) and the model
descriptor (``describe``).

Every registered name maps to a class, its default configuration and its task;
``create(name, **overrides)`` builds it and records ``model.model_name`` and
``model.config`` (the JSON-able constructor arguments without ``backend``), which
``save_weights`` stores so that ``load_weights(path)`` can rebuild the model.
``describe(model)`` says what a model is (name, task, scale, channels, size multiple) to
the code that runs it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

from torch import nn

from ..tasks import get_task
from .common import RestorationModel
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
    task: str  # a key of tri_panet.tasks.TASKS
    description: str
    defaults: dict = field(default_factory=dict)
    #: The largest tile worth restoring in (``ModelInfo.tile``), None: no such limit.
    tile: int | None = None

    @property
    def n_colors(self) -> int:
        """Input (and output) channels of the default configuration."""
        return self.defaults.get("n_colors", _default_arg(self.cls, "n_colors"))

    @property
    def scale(self) -> int:
        """SR factor of the default configuration (1: same size out)."""
        return self.defaults.get("scale", _default_arg(self.cls, "scale") or 1)


def _default_arg(cls: type, name: str):
    p = inspect.signature(cls.__init__).parameters.get(name)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


_REGISTRY: dict[str, ModelSpec] = {}


def _register(spec: ModelSpec) -> None:
    _REGISTRY[spec.name] = spec


_register(
    ModelSpec(
        "panet-denoise",
        PANet,
        "denoise",
        "Published PANet, colour AWGN denoising (64 feats, 80 ResBlocks)",
        {"n_colors": 3},
    )
)
_register(
    ModelSpec(
        "panet-demosaic",
        PANet,
        "demosaic",
        "Published PANet, Bayer RGGB demosaicing (64 feats, 80 ResBlocks)",
        {"n_colors": 3},
    )
)
_register(
    ModelSpec(
        "panet-jpeg",
        PANet,
        "jpeg",
        "Published PANet, JPEG artefact removal on the Y channel (1 colour)",
        {"n_colors": 1},
    )
)
for _s in (2, 3, 4):
    _register(
        ModelSpec(
            f"paedsr-x{_s}",
            PAEDSR,
            "sr",
            f"Published PA-EDSR x{_s} super-resolution (256 feats, 32 ResBlocks)",
            {"scale": _s},
        )
    )
# Trained on 32-48 px patches, the tiny and fast models restore no better in tiles above
# 64 px, only slower (measured: tri_panet/weights/*.md, "Tile size").
_SMALL_TILE = 64
_register(
    ModelSpec(
        "tiny-denoise",
        TinyPANet,
        "denoise",
        "Tiny PANet (32 feats, 8 ResBlocks), colour denoising, global residual",
        {"n_colors": 3},
        tile=_SMALL_TILE,
    )
)
_register(
    ModelSpec(
        "tiny-jpeg",
        TinyPANet,
        "jpeg",
        "Tiny PANet (32 feats, 8 ResBlocks), JPEG on the Y channel, global residual",
        {"n_colors": 1},
        tile=_SMALL_TILE,
    )
)
_register(
    ModelSpec(
        "tiny-demosaic",
        TinyPANet,
        "demosaic",
        "Tiny PANet (32 feats, 8 ResBlocks), RGGB demosaicing, global residual",
        {"n_colors": 3},
        tile=_SMALL_TILE,
    )
)
for _s in (2, 3, 4):
    _register(
        ModelSpec(
            f"tiny-sr-x{_s}",
            TinySR,
            "sr",
            f"Tiny SR x{_s} (32 feats, 8 ResBlocks), pixel-shuffle tail + bicubic skip",
            {"scale": _s},
            tile=_SMALL_TILE,
        )
    )
# The fast family: the same body on a feature map pixel-unshuffled by 2 (attention ~16x cheaper per pixel).
_FAST = {"down": 2, "n_feats": 64}
_register(
    ModelSpec(
        "fast-denoise",
        TinyPANet,
        "denoise",
        "Fast tiny PANet (unshuffle 2, 64 feats, 8 ResBlocks), colour denoising",
        {"n_colors": 3, **_FAST},
        tile=_SMALL_TILE,
    )
)
_register(
    ModelSpec(
        "fast-jpeg",
        TinyPANet,
        "jpeg",
        "Fast tiny PANet (unshuffle 2, 64 feats, 8 ResBlocks), JPEG on the Y channel",
        {"n_colors": 1, **_FAST},
        tile=_SMALL_TILE,
    )
)
_register(
    ModelSpec(
        "fast-demosaic",
        TinyPANet,
        "demosaic",
        "Fast tiny PANet (unshuffle 2, 64 feats, 8 ResBlocks), RGGB demosaicing",
        {"n_colors": 3, **_FAST},
        tile=_SMALL_TILE,
    )
)
for _s in (2, 3, 4):
    _register(
        ModelSpec(
            f"fast-sr-x{_s}",
            TinySR,
            "sr",
            f"Fast tiny SR x{_s} (unshuffle 2, 64 feats, 8 ResBlocks), bicubic skip",
            {"scale": _s, **_FAST},
            tile=_SMALL_TILE,
        )
    )


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
    """What ``name`` is: dict(name, task, n_colors, scale, description, class, defaults, tile)."""
    spec = get_spec(name)
    return {
        "name": spec.name,
        "task": spec.task,
        "n_colors": spec.n_colors,
        "scale": spec.scale,
        "description": spec.description,
        "class": spec.cls.__name__,
        "defaults": dict(spec.defaults),
        "tile": spec.tile,
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


@dataclass(frozen=True)
class ModelInfo:
    """What a restoration model is, for the code that runs it (:func:`describe`).

    ``name`` / ``task``: the registry name and its task (None when the model was not built
    from the registry); ``scale``: output side / input side; ``n_colors``: the input (and
    output) channels, None when any count is taken; ``multiple``: H and W must be
    multiples of it (``restore`` pads the image up to one and starts its tiles on one: the
    model's own multiple and its task's period, 2 for the Bayer pattern); ``tile``: the largest tile
    side worth restoring in (``--tile auto`` goes no larger), None: no limit but the cost.
    """

    name: str | None = None
    task: str | None = None
    scale: int = 1
    n_colors: int | None = None
    multiple: int = 1
    tile: int | None = None


def describe(model: object) -> ModelInfo:
    """The :class:`ModelInfo` of ``model``.

    A registry network (:class:`~tri_panet.models.common.RestorationModel`) reports its own
    scale, channels and size multiple, and its registry name and task when it was built by
    ``create`` (or ``load_weights`` / ``load_pretrained``). Anything else (a foreign module,
    a function) is taken to keep the image size and accept any channel count: ``ModelInfo()``.
    """
    if not isinstance(model, RestorationModel):
        return ModelInfo()
    spec = _REGISTRY.get(model.model_name) if model.model_name else None
    return ModelInfo(
        name=model.model_name,
        task=spec.task if spec else None,
        scale=model.scale,
        n_colors=model.n_colors,
        multiple=math.lcm(model.multiple, get_task(spec.task).period if spec else 1),
        tile=spec.tile if spec else None,
    )
