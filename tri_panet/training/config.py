"""Training configuration: one dataclass, filled from defaults, a TOML file and flags.

Precedence: dataclass defaults < TOML file (``--config``) < command-line flags. A TOML
file holds the same names as the dataclass fields (flat), plus an optional
``[model_args]`` table of constructor overrides for the registry model::

    task = "denoise"
    model = "tiny-denoise"
    data = ["photos/train", "more-photos/"]
    val = "photos/val"
    sigma_range = [0, 55]
    steps = 2000
    batch_size = 8
    patch_size = 48

    [model_args]
    n_feats = 32

:meth:`TrainConfig.to_toml` writes such a file back (every run stores its resolved
configuration as ``OUT/config.toml``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from pathlib import Path

from ..device import check_device_name
from ..tasks import LEVELS, SCALED_TASKS, Level, get_task
from .losses import LOSSES

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 with the tomli backport
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

__all__ = ["TrainConfig", "load_toml"]

SCHEDULES = ("cosine", "step", "constant")
AMP_MODES = ("none", "bf16", "fp16")

#: The settings that name files or folders (stored as absolute paths in OUT/config.toml).
PATH_SETTINGS = ("data", "val", "weights", "init_from", "out")


def _level_fields(level: Level) -> tuple[str, str, str]:
    """The settings of a degradation level: fixed, blind range, validation."""
    return level.name, f"{level.name}_range", f"val_{level.name}"


@dataclass
class TrainConfig:
    """Everything a training run needs (see docs/TRAINING.md for the meaning of each field).

    Sizes are in pixels, ``sigma`` on the 0-255 scale, ``lr`` per Adam step, ``steps``
    counted in optimiser steps. ``batch_size`` is per process: with ``torchrun`` the
    global batch is ``batch_size * world_size``. ``data`` is required (``Trainer`` refuses
    a run without it); ``val`` is optional. The degradation settings of each task's level
    (``sigma*`` for denoise, ``quality*`` for jpeg; ``tri_panet.tasks``) apply to that
    task only; their defaults are the task's.
    """

    # what to train
    task: str = "denoise"
    model: str | None = None  # registry name; None: fast-<task> (fast-sr-x<scale> for sr)
    model_args: dict = field(default_factory=dict)  # constructor overrides (fresh models only)
    weights: str | None = None  # initialise from this .safetensors / official .pth file
    pretrained: bool = False  # initialise from the bundled weights of `model` (finetune)
    strict_weights: bool = True  # missing/unexpected keys in `weights` are errors
    init_from: str | None = None  # warm start: a fresh `model` takes this file's tensors that fit
    backend: str = "auto"  # attention backend

    # data
    data: list[str] = field(default_factory=list)  # folders of clean training images
    val: str | None = None  # folder of clean validation images
    val_limit: int = 4  # validate on the first N images of `val` (0: all)
    val_crop: int | None = 128  # centre-crop validation images to this side (None: whole)
    val_tile: int | None = None  # tiled validation (None: whole image / crop)
    val_sigma: float | None = None  # None: `sigma`, else the task's (25)
    val_quality: int | None = None  # None: `quality`, else the task's (20)
    color: bool | None = None  # None: from the model's n_colors
    patch_size: int = 48  # input patch side (the target is patch_size * scale for sr)
    sigma: float | None = None
    sigma_range: list[float] | None = None  # default for denoise: [0, 55] (blind)
    quality: int | None = None
    quality_range: list[int] | None = None  # default for jpeg: [10, 40]
    scale: int | None = None  # sr: from the model
    clip_noise: bool = False  # clamp noisy inputs to [0, 1] (the benchmarks do not)
    num_workers: int = 0  # DataLoader worker processes

    # optimisation
    steps: int = 1000
    stop_at: int = 0  # stop after this step, checkpointed (0: at steps); the schedule still follows steps
    batch_size: int = 8
    # lr, warm-up and clipping: the recipe study's best (docs/TRAINING.md "Recipe study")
    lr: float = 1e-3
    lr_min: float = 1e-6  # cosine floor
    schedule: str = "cosine"  # cosine | step | constant (all after linear warmup)
    warmup_steps: int = 100
    lr_step: int = 0  # step schedule: multiply by lr_gamma every lr_step steps (0: steps // 2)
    lr_gamma: float = 0.5
    loss: str = "l1"  # a name of losses.LOSSES: l1 | charbonnier (a smooth L1)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    amp: str = "none"  # none | bf16 | fp16 (fp16 with GradScaler, GPU only)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0: the free cores, tri_panet.device.choose_threads)
    seed: int = 0

    # bookkeeping
    out: str | None = None  # run folder; None: runs/<model>
    ckpt_every: int = 500
    keep_checkpoints: int = 2  # most recent checkpoints kept (>= 1)
    val_every: int = 500  # 0: only at the end
    log_every: int = 10
    resume: bool = False
    progress: bool = True  # tqdm progress bar (rank 0)

    # ------------------------------------------------------------------ build

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "config") -> TrainConfig:
        """A config from a dict of field values (unknown names raise ValueError)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; known: {sorted(names)}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path, overrides: dict | None = None) -> TrainConfig:
        """Read ``path`` (TOML), then apply ``overrides`` (e.g. the flags given)."""
        values = load_toml(path)
        values.update({k: v for k, v in (overrides or {}).items()})
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict:
        """Plain dict of all fields (JSON-able)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_toml(self) -> str:
        """The configuration as TOML text that :meth:`from_toml` reads back (None fields omitted)."""
        lines, table = [], []
        for k, v in self.to_dict().items():
            if v is None:
                continue
            if k == "model_args":
                if v:
                    table.append("\n[model_args]")
                    table += [f"{a} = {_toml_value(b)}" for a, b in v.items() if b is not None]
                continue
            lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines + table) + "\n"

    # ------------------------------------------------------------------ derived

    @property
    def model_name(self) -> str:
        """The registry name trained (``model`` or the task's tiny model)."""
        return self.model or get_task(self.task).default_model(self.scale)

    @property
    def out_dir(self) -> Path:
        """The run folder."""
        return Path(self.out) if self.out else Path("runs") / self.model_name

    def resolve_paths(self) -> None:
        """Make the file and folder settings (:data:`PATH_SETTINGS`) absolute, ``out``
        included (its default too), so that the stored configuration means the same from
        any working folder."""
        self.data = [os.path.abspath(d) for d in self.data]
        for name in PATH_SETTINGS:
            if name not in ("data", "out") and getattr(self, name) is not None:
                setattr(self, name, os.path.abspath(getattr(self, name)))
        self.out = os.path.abspath(self.out_dir)  # out_dir: the default folder when out is None

    def degradation_kwargs(self) -> dict:
        """Keyword arguments of ``make_degradation`` for the training data: the fixed level
        if one is set, else the blind range (default: the task's)."""
        level, level_range, _ = self._level_settings()
        return get_task(self.task).training_params(level, level_range, scale=self.scale, clip=self.clip_noise)

    def val_degradation_kwargs(self) -> dict:
        """Keyword arguments of ``make_degradation`` for validation: ``val_<level>``, else
        the fixed training level, else the task's default."""
        level, _, val_level = self._level_settings()
        level = val_level if val_level is not None else level
        return get_task(self.task).fixed_params(level, scale=self.scale, clip=self.clip_noise)

    def _level_settings(self) -> tuple:
        """The values of the task level's (fixed, range, validation) settings."""
        level = get_task(self.task).level
        return tuple(getattr(self, f) for f in _level_fields(level)) if level else (None, None, None)

    # ------------------------------------------------------------------ checks

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the first bad setting."""
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [self.data]
        if isinstance(self.data, (list, tuple)):
            self.data = [os.fspath(d) if isinstance(d, os.PathLike) else d for d in self.data]
        for name in PATH_SETTINGS[1:]:
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        if not all(isinstance(k, str) for k in self.model_args):
            raise TypeError(f"model_args names must be strings, got {list(self.model_args)!r}")
        task = get_task(self.task)
        for name in ("steps", "batch_size", "patch_size", "ckpt_every", "log_every", "keep_checkpoints"):
            _check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "lr_step", "val_every", "val_limit", "num_workers", "threads", "seed", "stop_at"):
            _check_int(name, getattr(self, name), 0)
        if self.stop_at > self.steps:
            raise ValueError(f"stop_at must be at most steps ({self.steps}), got {self.stop_at}")
        for name in ("val_crop", "val_tile"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        for name in ("lr", "lr_gamma"):
            _check_real(name, getattr(self, name), positive=True)
        for name in ("lr_min", "weight_decay", "grad_clip"):
            _check_real(name, getattr(self, name), positive=False)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        check_device_name(self.device)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.weights is not None and self.pretrained:
            raise ValueError("give either weights (a file) or pretrained (the bundled weights), not both")
        if self.init_from is not None and (self.weights is not None or self.pretrained):
            raise ValueError("init_from warm-starts a fresh model: give it without weights or pretrained")
        if self.model_args and self.pretrained:
            raise ValueError("model_args cannot change a pretrained model (its bundled file fixes the architecture)")
        foreign = [f for level in LEVELS if level != task.level for f in _level_fields(level)]
        given = [n for n in foreign if getattr(self, n) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} does not apply to task {self.task!r}")
        if task.level is not None:
            fixed, blind, _ = _level_fields(task.level)
            if getattr(self, fixed) is not None and getattr(self, blind) is not None:
                raise ValueError(f"give {fixed} (fixed) or {blind} (blind), not both")
            v = getattr(self, blind)
            if v is not None and len(v) != 2:
                raise ValueError(f"{blind} must be two numbers (low, high), got {v!r}")
        if self.scale is not None:
            if not task.scaled:
                scaled = " / ".join(map(repr, SCALED_TASKS))
                raise ValueError(f"scale applies to task {scaled} only, got task {self.task!r}")
            if self.scale not in task.scales:
                raise ValueError(f"scale must be one of {task.scales}, got {self.scale!r}")


#: What each field type must be, in words, and the test of a value.
_TYPES: dict[type, tuple[str, typing.Callable[[object], bool]]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, Integral) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, Real) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
    dict: ("a table", lambda v: isinstance(v, dict)),
}


def _check_type(name: str, value: object, hint) -> None:
    """TypeError naming ``name`` unless ``value`` is of the annotated type ``hint`` (``X``,
    ``X | None``, ``list[X]``): strictly, so that ``resume = "no"`` is not taken as true
    and ``steps = 3.0`` is not rounded. Floats accept integers."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        if value is None:
            return
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]  # one type besides None
    if typing.get_origin(hint) is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be a list, got {value!r}")
        (item,) = typing.get_args(hint) or (object,)
        for i, v in enumerate(value):
            _check_type(f"{name}[{i}]", v, item)
        return
    if hint is object:
        return
    want, ok = _TYPES[hint]
    if not ok(value):
        raise TypeError(f"{name} must be {want}, got {value!r}")


def _check_int(name: str, value: int, minimum: int) -> None:
    """ValueError unless ``value`` (an int: :func:`_check_type` came first) is >= ``minimum``."""
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_real(name: str, value: float, *, positive: bool) -> None:
    """ValueError unless ``value`` (a number) is finite and >= 0 (> 0 if ``positive``)."""
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {value}")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def load_toml(path) -> dict:
    """The settings of a TOML config file as a dict (ValueError on a missing/invalid file)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    if tomllib is None:  # pragma: no cover
        raise ValueError("reading TOML configs needs Python >= 3.11 (tomllib) or the tomli package")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {e}") from e
