"""The learning-rate schedule: linear warmup, then cosine, step or constant."""

from __future__ import annotations

import math

from .config import TrainConfig

__all__ = ["lr_factor"]


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` after ``step`` optimiser steps: linear warmup over
    ``warmup_steps``, then cosine decay to ``lr_min`` at ``steps``, or x ``lr_gamma`` every
    ``lr_step`` steps (default ``steps // 2``), or constant."""
    w = config.warmup_steps
    if w and step < w:
        return (step + 1) / w
    if config.schedule == "cosine":
        t = min(max(step - w, 0) / max(config.steps - w, 1), 1.0)
        floor = min(config.lr_min / config.lr, 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if config.schedule == "step":
        every = config.lr_step or max(config.steps // 2, 1)
        return config.lr_gamma ** (max(step - w, 0) // every)
    return 1.0
