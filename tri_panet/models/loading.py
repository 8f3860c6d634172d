"""``build_model``: the one way the command line, the demo and the trainer get a model
(fresh, from a weights file, or with its bundled weights)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .registry import create, describe, get_spec
from .weights import (
    _weights_file,
    load_pretrained,
    load_state_file,
    load_state_into,
    load_weights,
    read_metadata,
)

__all__ = ["build_model"]


def build_model(
    name: str | None = None,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    model_args: dict | None = None,
    backend: str = "auto",
    strict: bool = True,
    task: str | None = None,
) -> nn.Module:
    """A model for training or inference (in training mode unless ``pretrained``).

    - ``pretrained``: the registry model ``name`` with its bundled weights (``load_pretrained``);
    - ``weights``: a ``.safetensors`` written by ``save_weights`` (rebuilt from its metadata
      unless ``model_args`` are given) or an official ``.pth`` / ``.pt`` (``name`` required:
      it gives the architecture; read with ``torch.load(weights_only=True)``);
    - neither: a freshly initialised ``create(name, **model_args)``.

    ``task``, when given, must be the registry task of the model (ValueError otherwise).
    ``describe(model).name`` is its registry name: ``name``, or the one the file records.
    """
    model_args = dict(model_args or {})
    if pretrained:
        if name is None:
            raise ValueError("pretrained weights need a model name (--model NAME)")
        model = load_pretrained(name, backend=backend)
    elif weights is not None:
        model = _from_file(Path(weights), name, model_args, backend, strict)
    else:
        if name is None:
            raise ValueError("no model given: pass a registry name (--model NAME) or a weights file")
        model = create(name, backend=backend, **model_args)
    info = describe(model)
    if task is not None and info.task is not None and info.task != task:
        raise ValueError(f"model {info.name!r} is made for task {info.task!r}, not {task!r}")
    return model


def _from_file(path: Path, name: str | None, model_args: dict, backend: str, strict: bool) -> nn.Module:
    """The model held by weights file ``path`` (see :func:`build_model`)."""
    _weights_file(path)  # a missing file or a folder: say so before anything else
    meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    if not model_args and (meta.get("tri_panet.model") or meta.get("tri_panet.class")):
        model = load_weights(path, backend=backend, strict=strict)
        held = describe(model).name
        if name is not None and held not in (None, name):
            raise ValueError(f"{path} holds model {held!r}, not {name!r}")
        if name is not None and held is None:  # the file names only its class: the caller names the model
            if type(model) is not get_spec(name).cls:
                raise ValueError(f"{path} holds a {type(model).__name__}, not {name!r} ({get_spec(name).cls.__name__})")
            model.model_name = name
        return model
    if name is None:
        raise ValueError(f"{path} does not say which model it holds; name the architecture with --model NAME")
    model = create(name, backend=backend, **model_args)
    return load_state_into(model, load_state_file(path), strict=strict, source=str(path))
