"""Training checkpoints: written atomically, read back without unpickling anything.

Layout of a run folder's ``checkpoints/``::

    checkpoints/
      step_00000500/
        model.safetensors   # the weights (save_weights: loadable by load_weights / --weights)
        state.safetensors   # optimiser, scheduler, grad scaler, RNG states, step, extras
      step_00001000/ ...
      latest                # the name of the newest complete checkpoint folder

``state.safetensors`` keeps the tensors of that state (Adam moments, RNG states) as
safetensors tensors and the rest as JSON in the file's metadata, so loading a checkpoint
runs no pickled code.

Atomicity: a checkpoint is written into a hidden temporary folder, flushed, then renamed
to ``step_XXXXXXXX`` (a rename is atomic), and only then is ``latest`` replaced (temporary
file + ``os.replace``). A run killed at any moment leaves its previous checkpoint and
``latest`` intact; :func:`find_latest` also ignores incomplete folders. A checkpoint
damaged after the fact (a truncated file) is skipped by :func:`load_latest`, which falls
back to the newest intact one. Folders and files get the permissions of the umask.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._files import make_temp_folder, new_file_mode, write_text_atomic
from ..models.weights import load_state_file, load_state_into, read_metadata, save_weights

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "load_latest",
    "find_latest",
    "list_checkpoints",
    "capture_rng",
    "restore_rng",
    "pack_state",
    "unpack_state",
]

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
LATEST_FILE = "latest"
_META_KEY = "tri_panet.checkpoint"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


# ---------------------------------------------------------------------------------------
# nested state <-> (JSON tree, tensors)
# ---------------------------------------------------------------------------------------


def pack_state(obj, tensors: dict[str, torch.Tensor], prefix: str = "s"):
    """Replace the tensors (and numpy arrays) inside ``obj`` by references, storing them in
    ``tensors``; returns a JSON-able tree. Dicts with non-string keys (the optimiser's
    integer parameter ids) and tuples are kept as such through tagged nodes."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(
            np.ascontiguousarray(obj).astype(np.int64 if obj.dtype.kind in "iu" else obj.dtype)
        )
        return {"__ndarray__": prefix, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        items = [[k, pack_state(v, tensors, f"{prefix}.{i}")] for i, (k, v) in enumerate(obj.items())]
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
            return {k: v for k, v in items}
        for k, _ in items:
            if not isinstance(k, (str, int)):
                raise TypeError(f"cannot store a dict key of type {type(k).__name__} in a checkpoint")
        return {"__items__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def unpack_state(tree, tensors: dict[str, torch.Tensor]):
    """Inverse of :func:`pack_state`."""
    if isinstance(tree, list):
        return [unpack_state(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return tensors[tree["__ndarray__"]].numpy().astype(tree["dtype"])
        if "__tuple__" in tree:
            return tuple(unpack_state(v, tensors) for v in tree["__tuple__"])
        if "__items__" in tree:
            return {k: unpack_state(v, tensors) for k, v in tree["__items__"]}
        return {k: unpack_state(v, tensors) for k, v in tree.items()}
    return tree


# ---------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------


def capture_rng() -> dict:
    """The states of Python's, numpy's, torch's CPU and CUDA random generators."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    """Set the generators from :func:`capture_rng`'s dict (CUDA ones where devices match)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    """Flush a file or folder to disk (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def step_dir_name(step: int) -> str:
    """``step_00000100`` for step 100."""
    return f"step_{int(step):08d}"


def _complete(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / STATE_FILE).is_file()


def list_checkpoints(root) -> list[tuple[int, Path]]:
    """Complete checkpoint folders under ``root`` as (step, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and _complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_latest(root) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (``latest`` first, else the
    highest step), or None."""
    root = Path(root)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text().strip()
        if _STEP_DIR.match(name) and _complete(root / name):
            return root / name
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def save_checkpoint(
    root,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    scaler=None,
    *,
    extra: dict | None = None,
    metadata: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and return its folder.

    ``model`` is saved with ``save_weights`` (with ``metadata``), the optimiser /
    ``scheduler`` / ``scaler`` state dicts, the RNG states (:func:`capture_rng`), ``step``
    and ``extra`` (JSON-able values and tensors) into ``state.safetensors``. Afterwards
    only the newest ``keep`` checkpoints are kept.
    """
    from safetensors.torch import save_file

    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # leftovers of a run killed while writing
    for p in root.glob(".tmp-step_*"):
        shutil.rmtree(p, ignore_errors=True)
    tmp = make_temp_folder(root, f".tmp-{step_dir_name(step)}-")
    try:
        meta = {"step": int(step), **(metadata or {})}
        save_weights(model, tmp / MODEL_FILE, metadata=meta)
        state = {
            "step": int(step),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": capture_rng(),
            "extra": extra or {},
        }
        tensors: dict[str, torch.Tensor] = {}
        tree = pack_state(state, tensors)
        save_file(tensors, str(tmp / STATE_FILE), metadata={_META_KEY: json.dumps(tree)})
        os.chmod(tmp / STATE_FILE, new_file_mode())  # safetensors creates it 0600
        for f in (tmp / MODEL_FILE, tmp / STATE_FILE, tmp):
            _fsync_path(f)
        final = root / step_dir_name(step)
        trash = None
        if final.exists():  # the same step written again (a resumed, already finished run)
            trash = make_temp_folder(root, ".tmp-step_old-")
            os.replace(final, trash / final.name)
        os.replace(tmp, final)
        _fsync_path(root)
        write_text_atomic(root / LATEST_FILE, final.name + "\n")
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for _, old in list_checkpoints(root)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(state, model tensors) of checkpoint folder ``path``, read in full before anything is
    loaded; ValueError naming the file when one is missing, truncated or not ours."""
    if not _complete(path):
        raise ValueError(f"{path} is not a complete checkpoint (needs {MODEL_FILE} and {STATE_FILE})")
    state_file = path / STATE_FILE
    meta = read_metadata(state_file)
    if _META_KEY not in meta:
        raise ValueError(f"{state_file} is not a tri_panet training checkpoint (no {_META_KEY} metadata)")
    try:
        state = unpack_state(json.loads(meta[_META_KEY]), load_state_file(state_file))
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{state_file} is damaged: {e!r}") from None
    return state, load_state_file(path / MODEL_FILE)


def load_checkpoint(
    path,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    scaler=None,
    *,
    restore_rng_state: bool = True,
) -> dict:
    """Read checkpoint folder ``path`` into the given objects (those not None) and
    return its state dict (``step``, ``extra``, ...). Optimiser tensors are moved to the
    device of the model's parameters by ``optimizer.load_state_dict``. Both files are read
    in full first: a damaged checkpoint raises ValueError naming the file and changes
    nothing."""
    path = Path(path)
    return _apply(path, *_read_checkpoint(path), model, optimizer, scheduler, scaler, restore_rng_state)


def _apply(
    path: Path, state: dict, weights: dict, model, optimizer, scheduler, scaler, restore_rng_state: bool
) -> dict:
    """Load a checkpoint read by :func:`_read_checkpoint` into the objects given; returns its state."""
    if model is not None:
        load_state_into(model, weights, source=str(path / MODEL_FILE))
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if restore_rng_state:
        restore_rng(state["rng"])
    return state


def load_latest(
    root,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    scaler=None,
    *,
    restore_rng_state: bool = True,
    warn: Callable[[str], None] = print,
) -> tuple[Path, dict] | None:
    """:func:`load_checkpoint` of the newest intact checkpoint under ``root``: (its folder,
    its state), or None when there is none. A damaged newer one (a file missing, truncated
    or not ours) is skipped with ``warn("warning: ...")`` naming it; ValueError when every
    checkpoint is damaged."""
    newest = find_latest(root)
    candidates = [newest] if newest is not None else []
    candidates += [p for _, p in reversed(list_checkpoints(root)) if p != newest]
    skipped = []
    for path in candidates:
        try:
            state, weights = _read_checkpoint(path)
        except ValueError as e:
            skipped.append(path.name)
            warn(f"warning: skipping damaged checkpoint {path}: {e}")
            continue
        return path, _apply(path, state, weights, model, optimizer, scheduler, scaler, restore_rng_state)
    if skipped:
        raise ValueError(f"no intact checkpoint in {root} (damaged: {', '.join(skipped)})")
    return None
