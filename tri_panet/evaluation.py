"""Evaluation on a folder of clean images: degrade with fixed seeds, restore, score.

Used by ``tri-panet eval`` and by the trainer's validation. Each image ``i`` is degraded
with ``sample_generator(seed, 0, i)``, so every run sees the same degraded inputs; the
degraded input (the task's input view), the model and any classical baselines
(:mod:`tri_panet.baselines`, run on those same inputs with the same drawn parameters) are
scored with the task's metric convention (``tri_panet.tasks``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .baselines import Baseline, get_baseline
from .data.degradations import Degradation
from .data.image import modcrop
from .data.io import load_image
from .data.seeding import sample_generator
from .inference import restore
from .metrics import psnr, ssim
from .models import describe
from .tasks import Task, get_task

__all__ = ["EvalPair", "evaluate", "prepare_eval_pairs", "run_baseline", "score"]


@dataclass(frozen=True)
class EvalPair:
    """One evaluation image: ``name``, the ``degraded`` model input and the clean
    ``target`` ([C, H, W] in [0, 1]), and the degradation's drawn ``params``."""

    name: str
    degraded: torch.Tensor
    target: torch.Tensor
    params: dict


def _center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` part of ``img`` [..., H, W] (less where it is smaller)."""
    h, w = img.shape[-2:]
    th, tw = min(size, h), min(size, w)
    top, left = (h - th) // 2, (w - tw) // 2
    return img[..., top : top + th, left : left + tw]


def prepare_eval_pairs(
    paths: Sequence[str | os.PathLike],
    degradation: Degradation,
    *,
    color: bool = True,
    seed: int = 0,
    crop: int | None = None,
) -> list[EvalPair]:
    """Load each clean image (RGB if ``color``, else grey), optionally centre-crop it to
    ``crop``, crop it to a multiple of the degradation's SR factor (``modcrop``; ``crop``
    should then be a multiple too) and degrade it with the generator of (``seed``, 0,
    image index): the same degraded inputs on every run."""
    pairs = []
    for i, p in enumerate(paths):
        clean = load_image(p, color=color)
        if crop is not None:
            clean = _center_crop(clean, crop)
        clean = modcrop(clean, degradation.scale)
        degraded, params = degradation.apply(clean, sample_generator(seed, 0, i))
        pairs.append(EvalPair(Path(p).name, degraded, clean, params[0]))
    return pairs


def _metrics(prefix: str, image: torch.Tensor, target: torch.Tensor, convention: dict, with_ssim: bool) -> dict:
    """``{prefix}_psnr`` (dB) and ``{prefix}_ssim`` of ``image`` against ``target``, both [C, H, W]."""
    image, target = image[None].cpu(), target[None]
    row = {f"{prefix}_psnr": float(psnr(image, target, **convention)[0])}
    if with_ssim:
        row[f"{prefix}_ssim"] = float(ssim(image, target, **convention)[0])
    return row


def score(
    task: Task,
    degraded: torch.Tensor,
    restored: torch.Tensor,
    target: torch.Tensor,
    scale: int = 1,
    *,
    with_ssim: bool = True,
) -> dict:
    """PSNR (dB) and SSIM of the task's input view of ``degraded`` (``input_*``: the input
    itself, bilinear demosaicing, bicubic upsampling) and of ``restored`` (``model_*``)
    against ``target``, all [C, H, W], with the task's metric convention at SR factor ``scale``."""
    conv = task.metric_convention(scale)
    row = _metrics("input", task.input_view(degraded, scale), target, conv, with_ssim)
    return row | _metrics("model", restored, target, conv, with_ssim)


def run_baseline(baseline: Baseline, pair: EvalPair, task: Task, scale: int = 1, *, with_ssim: bool = True) -> dict:
    """Run ``baseline`` on ``pair``'s degraded input with its drawn parameters (plus the SR
    factor ``scale`` for SR) and score it like the model: ``{name}_psnr`` (dB),
    ``{name}_ssim`` and ``{name}_seconds`` (wall time of the method alone)."""
    params = pair.params | ({"scale": scale} if task.scaled else {})
    t0 = time.perf_counter()
    out = baseline.run(pair.degraded, params)
    seconds = time.perf_counter() - t0
    if out.shape != pair.target.shape:  # scored pixel for pixel, with the model's border crop
        raise ValueError(
            f"baseline {baseline.name!r} turned {tuple(pair.degraded.shape)} into {tuple(out.shape)}, "
            f"not the target's {tuple(pair.target.shape)}"
        )
    row = _metrics(baseline.name, out, pair.target, task.metric_convention(scale), with_ssim)
    return row | {f"{baseline.name}_seconds": seconds}


def evaluate(
    model,
    pairs: Sequence[EvalPair],
    task: str,
    *,
    scale: int | None = None,
    tile: int | None = None,
    tile_overlap: int = 16,
    self_ensemble: bool = False,
    dtype: torch.dtype | None = None,
    baselines: Sequence[str] = (),
    with_ssim: bool = True,
    progress: bool = False,
    on_image: Callable[[dict], None] | None = None,
) -> dict:
    """Restore every pair with :func:`tri_panet.inference.restore` and score it against the
    target with the task's convention; the degraded input (the task's input view: the
    input itself, bilinear demosaicing, bicubic upsampling) is scored too, and so is each
    classical method named in ``baselines`` (:data:`tri_panet.baselines.BASELINES`, run by
    :func:`run_baseline` on the same degraded input). PSNR in dB, times in seconds.
    ``scale``: the SR factor, None for the model's (``describe``); the other arguments go
    to ``restore``.

    Returns dict(rows=[dict(image, input_psnr, input_ssim, model_psnr, model_ssim,
    seconds (the model's), and per baseline {name}_psnr, {name}_ssim, {name}_seconds)],
    mean=dict(the same keys but image), convention=dict(crop_border, y_channel)).
    ``on_image`` is called with each row as soon as it is ready.
    """
    from tqdm.auto import tqdm

    spec = get_task(task)
    scale = describe(model).scale if scale is None else scale
    methods = [get_baseline(name, spec.name) for name in baselines]  # a missing package fails before any work
    rows = []
    bar = tqdm(pairs, desc="eval", unit="img", disable=not progress, file=sys.stderr, leave=False)
    for pair in bar:
        t0 = time.perf_counter()
        out = restore(
            model,
            pair.degraded,
            tile=tile,
            tile_overlap=tile_overlap,
            self_ensemble=self_ensemble,
            scale=scale,
            dtype=dtype,
        )
        seconds = time.perf_counter() - t0
        row = {"image": pair.name, **score(spec, pair.degraded, out, pair.target, scale, with_ssim=with_ssim)}
        row["seconds"] = seconds
        for method in methods:
            row |= run_baseline(method, pair, spec, scale, with_ssim=with_ssim)
        rows.append(row)
        if on_image is not None:
            on_image(row)
    keys = [k for k in rows[0] if k != "image"] if rows else []
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return {"rows": rows, "mean": mean, "convention": spec.metric_convention(scale)}
