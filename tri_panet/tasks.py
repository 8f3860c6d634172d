"""The restoration tasks, one table entry each: everything the library needs to know about a task.

A :class:`Task` holds

- its degradation: the class (:mod:`tri_panet.data.degradations`), the strength the user
  sets (:class:`Level`: the fixed level of evaluation and validation, the blind range of
  training), the SR factors it allows, whether the noise can be clipped;
- how its degraded input is scored (:attr:`Task.input_view`: the input itself, or
  interpolated to the target's size), the classical baselines ``eval`` compares the model
  with by default (:attr:`Task.baselines`, names in :mod:`tri_panet.baselines`) and the
  metric convention (RGB or BT.601 Y, border crop), as in the published tables;
- its default registry model and the labels that reports print.

The command-line flags of a task follow from these fields (:attr:`Task.options`). The
command line, the training configuration, the engine, the evaluation and the datasets
read :data:`TASKS`; nothing else switches on task names. A fifth task is one more entry
(with its degradation class; a new kind of level also needs its ``TrainConfig`` fields).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral

import torch

from .data.degradations import (
    BayerMosaic,
    BicubicDownsampling,
    Degradation,
    GaussianNoise,
    JPEGCompression,
    bilinear_demosaic,
    cfa_to_mosaic,
)
from .data.matlab_resize import bicubic_upsample

__all__ = ["LEVELS", "SCALED_TASKS", "SCALES", "TASKS", "Level", "Task", "get_task", "make_degradation"]


@dataclass(frozen=True)
class Level:
    """The strength of a task's degradation that the user sets.

    ``name`` is the degradation's parameter and names the flag ``--{name}`` and the
    training settings ``{name}`` (fixed), ``{name}_range`` (blind) and ``val_{name}``.
    """

    name: str
    type: type  # float or int: how flags and settings are converted
    fixed: float | int  # the level of eval, restore --degrade and validation when none is given
    blind: tuple  # the (low, high) training range when neither a level nor a range is given
    help: str  # what it is, for --help


@dataclass(frozen=True)
class Task:
    """One restoration task (see the module docstring)."""

    name: str
    label: str  # what the task is, for --help
    degradation: type[Degradation]  # its constructor takes the parameters make_degradation accepts
    # (degraded, scale) -> the degraded input at the target's size, scored as the "input" column
    input_view: Callable[[torch.Tensor, int], torch.Tensor]
    input_name: str  # that image's name in reports ("noisy", "bicubic")
    model: str  # the default registry model; "{scale}" stands for the SR factor
    baselines: tuple[str, ...] = ()  # eval's default classical methods (tri_panet.baselines), those installed
    level: Level | None = None
    scales: tuple[int, ...] = ()  # the SR factors allowed; empty: the output has the input's size
    clips: bool = False  # the degradation takes ``clip`` (the flag --clip-noise)
    y_channel: bool = False  # scored on the BT.601 Y channel (else on RGB)
    from_grey: Callable[[torch.Tensor], torch.Tensor] | None = None  # a 1-channel file [1, H, W] -> model input
    # The input's period in px: tiles must start, and padding end, on multiples of it (the
    # Bayer pattern repeats every 2 px; a tile starting on an odd pixel swaps its colours).
    period: int = 1

    @property
    def scaled(self) -> bool:
        """Whether the model enlarges the image (by ``scale``, one of :attr:`scales`)."""
        return bool(self.scales)

    @property
    def options(self) -> tuple[str, ...]:
        """The degradation flags (without ``--``) that apply: the level's name, ``scale``."""
        return ((self.level.name,) if self.level else ()) + (("scale",) if self.scaled else ())

    def default_model(self, scale: int | None = None) -> str:
        """The registry model used when none is named (``fast-sr-x{scale}``, scale default 2, for sr)."""
        return self.model.format(scale=scale or (self.scales[0] if self.scales else 1))

    def metric_convention(self, scale: int = 1) -> dict:
        """``psnr`` / ``ssim`` keyword arguments of the task's published convention."""
        return {"crop_border": int(scale) if self.scaled else 0, "y_channel": self.y_channel}

    def metric_text(self, scale: int = 1, n_colors: int = 3) -> str:
        """The convention in words, e.g. ``Y channel (BT.601), border crop 2``."""
        if not self.y_channel:
            channels = "RGB"
        elif n_colors == 1:  # a grey model's images are read as Pillow luma, taken as Y
            channels = "grey (Pillow luma) images"
        else:
            channels = "Y channel (BT.601)"
        crop = self.metric_convention(scale)["crop_border"]
        return f"{channels}, {f'border crop {crop}' if crop else 'no border crop'}"

    def make_degradation(self, **params) -> Degradation:
        """The task's degradation with ``params`` (None values count as not given).

        Parameters that do not belong to the task raise ValueError, so a typo cannot pass
        silently; so do an SR factor outside :attr:`scales` and a missing one.
        """
        params = {k: v for k, v in params.items() if v is not None}
        takes = list(inspect.signature(self.degradation).parameters)
        extra = [k for k in params if k not in takes]
        if extra:
            raise ValueError(
                f"{', '.join(extra)} does not apply to task {self.name!r} "
                f"(it takes: {', '.join(sorted(takes)) or 'nothing'})"
            )
        if self.scaled:
            scale = params.get("scale")
            if scale is None:
                raise ValueError(f"task {self.name!r} needs scale, one of {self.scales}")
            if isinstance(scale, bool) or not isinstance(scale, Integral) or scale not in self.scales:
                raise ValueError(f"scale must be one of {self.scales} for task {self.name!r}, got {scale!r}")
        return self.degradation(**params)

    def fixed_params(self, level: float | None = None, *, scale: int | None = None, clip: bool = False) -> dict:
        """``make_degradation`` arguments at one level: ``level``, else the task's default
        (evaluation, ``restore --degrade``, validation)."""
        params = {}
        if self.level is not None:
            params[self.level.name] = self.level.type(self.level.fixed if level is None else level)
        return params | self._size_and_clip(scale, clip)

    def training_params(
        self, level: float | None = None, level_range=None, *, scale: int | None = None, clip: bool = False
    ) -> dict:
        """``make_degradation`` arguments for training: the fixed ``level`` if given, else
        the blind ``level_range`` (default: the task's :attr:`Level.blind`)."""
        params = {}
        if self.level is not None and level is not None:
            params[self.level.name] = self.level.type(level)
        elif self.level is not None:
            lo, hi = self.level.blind if level_range is None else level_range
            params[f"{self.level.name}_range"] = (self.level.type(lo), self.level.type(hi))
        return params | self._size_and_clip(scale, clip)

    def _size_and_clip(self, scale: int | None, clip: bool) -> dict:
        """The ``scale`` and ``clip`` arguments, for the tasks that take them."""
        return ({"scale": scale} if self.scaled else {}) | ({"clip": bool(clip)} if self.clips else {})


def _unchanged(degraded: torch.Tensor, scale: int) -> torch.Tensor:
    """The degraded input itself (the input view of denoising and JPEG artefact removal)."""
    return degraded


def _bilinear(mosaic: torch.Tensor, scale: int) -> torch.Tensor:
    """Bilinear demosaicing: the mosaic as an image (its zeros would make a meaningless PSNR)."""
    return bilinear_demosaic(mosaic)


SIGMA = Level("sigma", float, fixed=25.0, blind=(0.0, 55.0), help="AWGN sigma on the 0-255 scale")
QUALITY = Level("quality", int, fixed=20, blind=(10, 40), help="JPEG quality 1..100")

#: The tasks by name, in the order the command line lists them.
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="denoise",
            label="AWGN denoising",
            degradation=GaussianNoise,
            level=SIGMA,
            clips=True,
            input_view=_unchanged,
            input_name="noisy",
            baselines=("cbm3d", "nlm"),
            model="fast-denoise",
        ),
        Task(
            name="jpeg",
            label="JPEG artefact removal",
            degradation=JPEGCompression,
            level=QUALITY,
            input_view=_unchanged,
            input_name="jpeg",
            baselines=("jpeg",),
            y_channel=True,
            model="fast-jpeg",
        ),
        Task(
            name="demosaic",
            label="Bayer RGGB demosaicing",
            degradation=BayerMosaic,
            from_grey=cfa_to_mosaic,
            input_view=_bilinear,
            input_name="bilinear",
            baselines=("menon2007", "bilinear"),
            model="fast-demosaic",
            period=2,
        ),
        Task(
            name="sr",
            label="super-resolution",
            degradation=BicubicDownsampling,
            scales=(2, 3, 4),
            input_view=bicubic_upsample,
            input_name="bicubic",
            baselines=("bicubic",),
            y_channel=True,
            model="fast-sr-x{scale}",
        ),
    )
}

#: Every task's level, once each (the flags --sigma, --quality, ...).
LEVELS: tuple[Level, ...] = tuple({t.level.name: t.level for t in TASKS.values() if t.level}.values())
#: Every SR factor some task allows (the choices of --scale), and those tasks.
SCALES: tuple[int, ...] = tuple(sorted({s for t in TASKS.values() for s in t.scales}))
SCALED_TASKS: tuple[str, ...] = tuple(t.name for t in TASKS.values() if t.scaled)


def get_task(name: str) -> Task:
    """The table entry of task ``name``; ValueError listing the tasks if it is unknown."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, got {name!r}")
    return TASKS[name]


def make_degradation(task: str, **params) -> Degradation:
    """The degradation of ``task`` ("denoise", "jpeg", "demosaic" or "sr") with ``params``.

    - denoise: exactly one of ``sigma`` (0-255 scale, >= 0) or ``sigma_range`` (low, high)
      for blind training; ``clip`` clamps the noisy image to [0, 1] (default: no).
    - jpeg: exactly one of ``quality`` (int 1..100) or ``quality_range`` (low, high).
    - demosaic: no parameter (RGGB mosaic, 3 channels with zeros).
    - sr: ``scale`` in 2, 3, 4 (MATLAB bicubic downsampling); ``quantize`` (default True)
      rounds the LR image to 8 bits like the benchmarks' LR PNG files.

    Returns a :class:`~tri_panet.data.degradations.Degradation`:
    ``degraded, params = degradation.apply(clean, generator)``.
    """
    return get_task(task).make_degradation(**params)
