"""Argument validation shared by the functional op and the modules.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong shape or value) with a message that names the argument and what was expected,
so that bad input never reaches a kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_positive_finite(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise if it is not a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    # Comparisons rather than math.isfinite: they also work on the symbolic floats of
    # torch.compile(dynamic=True) (NaN fails both, inf the second).
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool), else raise ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_patch_size(patch_size: object) -> int:
    """Return ``patch_size`` if it is a positive odd int, else raise."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise TypeError(f"patch_size must be an int, got {type(patch_size).__name__}")
    if patch_size <= 0 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd integer, got {patch_size}")
    return patch_size


def check_scales(scales: object) -> tuple[float, ...]:
    """Return pyramid ``scales`` as a tuple of floats in (0, 1], at least one."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise TypeError(f"scales must be a sequence of floats in (0, 1], got {type(scales).__name__}")
    if len(scales) == 0:
        raise ValueError("scales must hold at least one pyramid level, got an empty sequence")
    for i, s in enumerate(scales):
        if isinstance(s, bool) or not isinstance(s, Real):
            raise TypeError(f"scales[{i}] must be a real number, got {type(s).__name__}")
        if not (math.isfinite(s) and 0 < s <= 1):
            raise ValueError(f"scales[{i}] must lie in (0, 1], got {s!r}")
    return tuple(float(s) for s in scales)


def _check_map(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D [B, C, H, W], got shape {tuple(t.shape)}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have a floating dtype among float16, bfloat16, float32, float64, got {t.dtype}")
    if any(n == 0 for n in t.shape):
        raise ValueError(f"{name} must not have an empty dimension, got shape {tuple(t.shape)}")
    return t


def _as_levels(name: str, levels: object) -> list:
    if isinstance(levels, torch.Tensor):
        raise TypeError(f"{name} must be a sequence (list/tuple) of 4-D tensors, one per level, got a single Tensor")
    if not isinstance(levels, Sequence):
        raise TypeError(f"{name} must be a sequence (list/tuple) of 4-D tensors, got {type(levels).__name__}")
    if len(levels) == 0:
        raise ValueError(f"{name} must hold at least one pyramid level, got an empty sequence")
    return list(levels)


def check_attention_inputs(query, keys, values) -> tuple[torch.Tensor, list, list]:
    """Validate the tensors of the op; returns (query, keys, values) as (Tensor, list, list).

    query [B, Cq, H, W]; keys[l] [B, Cq, H_l, W_l]; values[l] [B, Cv, H_l, W_l]; all of one
    dtype and device.
    """
    _check_map("query", query)
    keys = _as_levels("keys", keys)
    values = _as_levels("values", values)
    if len(keys) != len(values):
        raise ValueError(f"keys and values must have the same number of levels, got {len(keys)} and {len(values)}")
    batch, channels = query.shape[:2]
    value_channels = None
    for level, (k, v) in enumerate(zip(keys, values)):
        for name, t in ((f"keys[{level}]", k), (f"values[{level}]", v)):
            _check_map(name, t)
            if t.dtype != query.dtype:
                raise TypeError(f"{name} must have the dtype of query ({query.dtype}), got {t.dtype}")
            if t.device != query.device:
                raise ValueError(f"{name} must be on the device of query ({query.device}), got {t.device}")
            if t.shape[0] != batch:
                raise ValueError(f"{name} must have the batch size of query ({batch}), got {t.shape[0]}")
        if k.shape[1] != channels:
            raise ValueError(f"keys[{level}] must have the channels of query ({channels}), got {k.shape[1]}")
        if value_channels is None:
            value_channels = v.shape[1]
        elif v.shape[1] != value_channels:
            raise ValueError(
                f"values[{level}] must have the channels of values[0] ({value_channels}), got {v.shape[1]}"
            )
        if k.shape[2:] != v.shape[2:]:
            raise ValueError(
                f"keys[{level}] and values[{level}] must have the same spatial size, "
                f"got {tuple(k.shape[2:])} and {tuple(v.shape[2:])}"
            )
    return query, keys, values
