"""Weights: safetensors save/load (atomic, with the model's config), official ``.pth``
checkpoints (``torch.load(weights_only=True)``: no pickled code runs) and bundled weights.

A file written by ``save_weights`` holds every state-dict name, aliases included
(PANet's repeated PReLU, PA-EDSR's ``msa.*``), so it is also a complete official-style
state dict. Its metadata (all strings) holds:

- ``tri_panet.model``: the registry name ("" if the model was not built by ``create``)
- ``tri_panet.class``: the model class name
- ``tri_panet.config``: JSON of the constructor arguments (``model.config``)
- ``tri_panet.version``, plus any user ``metadata``.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .._files import atomic_write
from .registry import MODEL_CLASSES, available_models, create, describe, get_spec

#: Folder of the bundled weights: tri_panet/weights/<name>.safetensors (package data).
WEIGHTS_PACKAGE_DIR = "weights"

_META_MODEL = "tri_panet.model"
_META_CLASS = "tri_panet.class"
_META_CONFIG = "tri_panet.config"
_META_VERSION = "tri_panet.version"
_SAFETENSORS_SUFFIXES = (".safetensors",)
_TORCH_SUFFIXES = (".pth", ".pt")


def _as_path(name: str, path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _state_dict_for_file(model: nn.Module) -> dict[str, torch.Tensor]:
    """All state-dict entries as independent contiguous CPU tensors.

    safetensors refuses tensors that share memory; aliased entries (shared modules) are
    small, so each name simply gets its own copy.
    """
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(
    model: nn.Module, path, *, metadata: Mapping[str, object] | None = None, overwrite: bool = False
) -> Path:
    """Write ``model``'s state dict to ``path`` (must end in .safetensors) atomically.

    The file is written to a temporary name in the same folder and then moved into place,
    so a reader never sees a partial file. An existing ``path`` raises FileExistsError
    unless ``overwrite=True``. ``metadata`` values that are not strings are stored as JSON.
    Returns the path.
    """
    from safetensors.torch import save as safetensors_bytes

    from .. import __version__

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = _as_path("path", path)
    if path.suffix not in _SAFETENSORS_SUFFIXES:
        raise ValueError(f"path must end in .safetensors (weights are never pickled), got {str(path)!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    meta: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be str, got {type(k).__name__}")
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    config = getattr(model, "config", None)
    meta[_META_MODEL] = describe(model).name or ""
    meta[_META_CLASS] = type(model).__name__
    if config is not None:
        meta[_META_CONFIG] = json.dumps(config)
    meta[_META_VERSION] = __version__

    tensors = _state_dict_for_file(model)
    atomic_write(path, lambda f: f.write(safetensors_bytes(tensors, metadata=meta)), overwrite=overwrite)
    return path


def _weights_file(path) -> Path:
    """``path`` as a Path to an existing file: FileNotFoundError when there is none,
    IsADirectoryError for a folder (a run folder holds its weights in model.safetensors)."""
    path = _as_path("path", path)
    if path.is_dir():
        example = str(path / "model.safetensors")
        raise IsADirectoryError(f"weights {str(path)!r} is a folder, not a file (e.g. {example!r})")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    return path


def _read_safetensors(path: Path, read):
    """``read(str(path))`` with safetensors' errors (a random, truncated or empty file) as
    ValueError naming the file."""
    from safetensors import SafetensorError

    try:
        return read(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable .safetensors file (truncated, or not safetensors): {e}") from None


def read_metadata(path) -> dict[str, str]:
    """The metadata dict of a .safetensors file (empty if it has none); ValueError naming
    the file when it is not a readable safetensors file."""
    from safetensors import safe_open

    def metadata(name: str) -> dict[str, str]:
        with safe_open(name, framework="pt") as f:
            return dict(f.metadata() or {})

    return _read_safetensors(_weights_file(path), metadata)


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` (DataParallel/DDP) or ``model.`` prefix shared by every key."""
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_state_file(path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or from an official .pth/.pt checkpoint.

    ``.pth`` files are read with ``torch.load(weights_only=True)``, which refuses any
    pickled object other than tensors and plain containers. A checkpoint that wraps the
    state dict (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped; a ``module.``
    prefix (DataParallel) is removed.
    """
    path = _weights_file(path)
    if path.suffix in _SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        return _read_safetensors(path, load_file)
    if path.suffix not in _TORCH_SUFFIXES:
        raise ValueError(f"weights file must end in .safetensors, .pth or .pt, got {str(path)!r}")
    if not _is_torch_checkpoint(path):
        raise ValueError(
            f"{path} is not a PyTorch checkpoint (neither torch.save's zip archive nor its legacy format; truncated?)"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} holds objects other than tensors; refusing to unpickle it (weights_only=True): {e}"
        ) from e
    except (RuntimeError, EOFError) as e:  # a damaged archive
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated?): {e}") from None
    for key in ("state_dict", "model", "params"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return _strip_prefix(dict(obj))


def _is_torch_checkpoint(path: Path) -> bool:
    """Whether ``path`` looks like a ``torch.save`` file: a zip archive, or the legacy format
    (a pickle stream, protocol 2)."""
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(2) == b"\x80\x02"


def _names(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_into(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True, source: str = "state dict"
) -> nn.Module:
    """Copy ``state`` into ``model``; ValueError naming missing/unexpected keys or bad shapes.

    With ``strict=False`` missing and unexpected keys are ignored (shapes are still checked).
    """
    own = model.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_names(unexpected)}")
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    bad = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if bad:
        raise ValueError(f"{source} has tensors of the wrong shape for {type(model).__name__}: " + "; ".join(bad[:12]))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return model


def copy_matching(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "state dict") -> list[str]:
    """Warm start: copy the tensors of ``state`` whose names and shapes match ``model``'s
    (an x2 SR body into an x3 model: all but the upsampler); returns the names of the
    model's tensors left as they were. ValueError naming ``source`` when none fits."""
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if not fit:
        raise ValueError(f"{source}: no tensor fits {type(model).__name__} (no name with the same shape)")
    model.load_state_dict(fit, strict=False)
    return sorted(set(own) - set(fit))


def _metadata_config(meta: Mapping[str, str], path) -> dict | None:
    """The constructor arguments in the ``tri_panet.config`` metadata field (None without
    one); ValueError naming the file and the field when they are not a JSON object."""
    text = meta.get(_META_CONFIG)
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: metadata field {_META_CONFIG} is not JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: metadata field {_META_CONFIG} must be a JSON object, got {text[:60]!r}")
    return config


def _build_from_metadata(path, field: str, build, **kwargs) -> nn.Module:
    """``build(**kwargs)``, the model a file's metadata describes; its refusals (an unknown
    name, arguments the class does not take or of the wrong type) as ValueError naming the
    file and the metadata ``field``."""
    try:
        return build(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: metadata field {field} does not describe a model: {e}") from None


def _model_from_metadata(meta: Mapping[str, str], path: Path, backend: str | None) -> nn.Module:
    extra = {} if backend is None else {"backend": backend}
    config = _metadata_config(meta, path)
    name = meta.get(_META_MODEL) or ""
    if name:
        field = _META_MODEL if name not in available_models() else _META_CONFIG
        return _build_from_metadata(path, field, create, name=name, **(config or {}), **extra)
    cls = MODEL_CLASSES.get(meta.get(_META_CLASS, ""))
    if cls is None or config is None:
        raise ValueError(
            f"{path} does not say which model it holds (no tri_panet.model / tri_panet.class + config "
            "metadata); pass a model or a registry name: load_weights(model_or_name, path)"
        )
    return _build_from_metadata(path, _META_CONFIG, cls, **config, **extra)


def load_weights(model_or_name, path=None, *, strict: bool = True, backend: str | None = None) -> nn.Module:
    """Load weights into a model and return it.

    - ``load_weights(model, path)``: into an existing ``nn.Module``;
    - ``load_weights("panet-denoise", path)``: build the registry model first (``path`` may be
      an official ``.pth``);
    - ``load_weights(path)``: rebuild the model from the file's metadata (safetensors written
      by ``save_weights`` only).
    ``backend`` sets the attention backend of a model built here. Missing or unexpected keys
    raise ValueError naming them (``strict=False`` ignores them).
    """
    if path is None:
        path = _as_path("path", model_or_name)
        if path.suffix not in _SAFETENSORS_SUFFIXES:
            raise ValueError(
                f"{str(path)!r} is not a .safetensors file with tri_panet metadata; for official checkpoints "
                "pass the model or its registry name: load_weights('panet-denoise', path)"
            )
        model = _model_from_metadata(read_metadata(path), path, backend)
    elif isinstance(model_or_name, nn.Module):
        model = model_or_name
    elif isinstance(model_or_name, str):
        model = create(model_or_name, **({} if backend is None else {"backend": backend}))
    else:
        raise TypeError(f"model_or_name must be an nn.Module or a registry name, got {type(model_or_name).__name__}")
    path = _as_path("path", path)
    return load_state_into(model, load_state_file(path), strict=strict, source=str(path))


def _bundled_dir():
    return resources.files("tri_panet").joinpath(WEIGHTS_PACKAGE_DIR)


def bundled_weights() -> tuple[str, ...]:
    """Names of the weights shipped in the package (tri_panet/weights/<name>.safetensors)."""
    folder = _bundled_dir()
    if not folder.is_dir():
        return ()
    return tuple(sorted(p.name[: -len(".safetensors")] for p in folder.iterdir() if p.name.endswith(".safetensors")))


def load_pretrained(name: str, *, backend: str = "auto") -> nn.Module:
    """The registry model ``name`` with its bundled weights, in eval mode.

    FileNotFoundError (listing the bundled weights) when the package ships none for ``name``.
    """
    get_spec(name)  # unknown names: ValueError listing the registry
    with resources.as_file(_bundled_dir().joinpath(f"{name}.safetensors")) as path:
        if not Path(path).is_file():
            have = ", ".join(bundled_weights()) or "none"
            raise FileNotFoundError(
                f"no bundled weights for {name!r} (expected tri_panet/weights/{name}.safetensors); "
                f"bundled weights: {have}"
            )
        # the bundled file may have been trained with a non-default configuration
        config = _metadata_config(read_metadata(path), path) or {}
        model = _build_from_metadata(path, _META_CONFIG, create, name=name, **config, backend=backend)
        load_state_into(model, load_state_file(path), source=str(path))
    return model.eval()
