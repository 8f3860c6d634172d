"""Training configuration: one dataclass, filled from defaults, a TOML file and flags.

Precedence: dataclass defaults < TOML file (``--config``) < command-line flags. A TOML
file holds the same names as the dataclass fields (flat), plus an optional
``[model_args]`` table of constructor overrides for the registry model::

    task = "denoise"
    model = "tiny-denoise"
    data = ["../shared/data/train/Wiki50", "../shared/data/train/SunHays80"]
    val = "../shared/data/test/Kodak24"
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
from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from pathlib import Path

from ..data.degradations import SR_SCALES, TASKS

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 with the tomli backport
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

__all__ = ["TrainConfig", "load_toml", "default_model_for"]

SCHEDULES = ("cosine", "step", "constant")
AMP_MODES = ("none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


def default_model_for(task: str, scale: int | None = None) -> str:
    """The tiny registry model of ``task`` (``tiny-sr-x{scale}`` for sr, scale default 2)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "sr":
        return f"tiny-sr-x{scale or 2}"
    return f"tiny-{task}"


@dataclass
class TrainConfig:
    """Everything a training run needs (see docs/TRAINING.md for the meaning of each field).

    Sizes are in pixels, ``sigma`` on the 0-255 scale, ``lr`` per Adam step, ``steps``
    counted in optimiser steps. ``batch_size`` is per process: with ``torchrun`` the
    global batch is ``batch_size * world_size``.
    """

    # what to train
    task: str = "denoise"
    model: str | None = None  # registry name; None: tiny-<task> (tiny-sr-x<scale> for sr)
    model_args: dict = field(default_factory=dict)  # constructor overrides (fresh models only)
    weights: str | None = None  # initialise from this .safetensors / official .pth file
    pretrained: bool = False  # initialise from the bundled weights of `model` (finetune)
    strict_weights: bool = True  # missing/unexpected keys in `weights` are errors
    backend: str = "auto"  # attention backend

    # data
    data: list = field(default_factory=list)  # folders of clean training images
    val: str | None = None  # folder of clean validation images
    val_limit: int = 4  # validate on the first N images of `val` (0: all)
    val_crop: int | None = 128  # centre-crop validation images to this side (None: whole)
    val_tile: int | None = None  # tiled validation (None: whole image / crop)
    val_sigma: float | None = None  # None: `sigma`, else 25
    val_quality: int | None = None  # None: `quality`, else 20
    color: bool | None = None  # None: from the model's n_colors
    patch_size: int = 48  # input patch side (the target is patch_size * scale for sr)
    sigma: float | None = None
    sigma_range: list | None = None  # default for denoise: [0, 55] (blind)
    quality: int | None = None
    quality_range: list | None = None  # default for jpeg: [10, 40]
    scale: int | None = None  # sr: from the model
    clip_noise: bool = False  # clamp noisy inputs to [0, 1] (the benchmarks do not)
    num_workers: int = 0  # DataLoader worker processes

    # optimisation
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    lr_min: float = 1e-6  # cosine floor
    schedule: str = "cosine"  # cosine | step | constant (all after linear warmup)
    warmup_steps: int = 0
    lr_step: int = 0  # step schedule: multiply by lr_gamma every lr_step steps (0: steps // 2)
    lr_gamma: float = 0.5
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 disables clipping
    amp: str = "none"  # none | bf16 | fp16 (fp16 with GradScaler, GPU only)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0: torch's default)
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
    def from_dict(cls, values: dict, *, source: str = "config") -> "TrainConfig":
        """A config from a dict of field values (unknown names raise ValueError)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; known: {sorted(names)}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path, overrides: dict | None = None) -> "TrainConfig":
        """Read ``path`` (TOML), then apply ``overrides`` (e.g. the flags given)."""
        values = load_toml(path)
        values.update({k: v for k, v in (overrides or {}).items()})
        return cls.from_dict(values, source=str(path))

    def replace(self, **changes) -> "TrainConfig":
        """A validated copy with ``changes``."""
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

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
        return self.model or default_model_for(self.task, self.scale)

    @property
    def out_dir(self) -> Path:
        """The run folder."""
        return Path(self.out) if self.out else Path("runs") / self.model_name

    def degradation_kwargs(self) -> dict:
        """Keyword arguments of ``make_degradation`` for the training data."""
        if self.task == "denoise":
            if self.sigma is not None:
                return {"sigma": float(self.sigma), "clip": self.clip_noise}
            lo, hi = self.sigma_range if self.sigma_range is not None else (0.0, 55.0)
            return {"sigma_range": (float(lo), float(hi)), "clip": self.clip_noise}
        if self.task == "jpeg":
            if self.quality is not None:
                return {"quality": int(self.quality)}
            lo, hi = self.quality_range if self.quality_range is not None else (10, 40)
            return {"quality_range": (int(lo), int(hi))}
        if self.task == "sr":
            return {"scale": self.scale}
        return {}

    def val_degradation_kwargs(self) -> dict:
        """Keyword arguments of ``make_degradation`` for validation (a fixed level)."""
        if self.task == "denoise":
            sigma = self.val_sigma if self.val_sigma is not None else (self.sigma if self.sigma is not None else 25.0)
            return {"sigma": float(sigma), "clip": self.clip_noise}
        if self.task == "jpeg":
            q = self.val_quality if self.val_quality is not None else (self.quality if self.quality is not None else 20)
            return {"quality": int(q)}
        if self.task == "sr":
            return {"scale": self.scale}
        return {}

    # ------------------------------------------------------------------ checks

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the first bad setting."""
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.model is not None and not isinstance(self.model, str):
            raise TypeError(f"model must be a registry name (str), got {type(self.model).__name__}")
        if not isinstance(self.model_args, dict):
            raise TypeError(f"model_args must be a table/dict, got {type(self.model_args).__name__}")
        if isinstance(self.data, (str, Path)):
            self.data = [str(self.data)]
        if not isinstance(self.data, (list, tuple)):
            raise TypeError(f"data must be a list of folders, got {type(self.data).__name__}")
        self.data = [str(d) for d in self.data]
        for name in ("steps", "batch_size", "patch_size", "ckpt_every", "log_every", "keep_checkpoints"):
            _check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "lr_step", "val_every", "val_limit", "num_workers", "threads", "seed"):
            _check_int(name, getattr(self, name), 0)
        for name in ("val_crop", "val_tile"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        for name in ("lr", "lr_gamma"):
            _check_real(name, getattr(self, name), positive=True)
        for name in ("lr_min", "weight_decay", "grad_clip"):
            _check_real(name, getattr(self, name), positive=False)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")
        if not (isinstance(self.betas, (list, tuple)) and len(self.betas) == 2):
            raise ValueError(f"betas must be two numbers, got {self.betas!r}")
        if self.weights is not None and self.pretrained:
            raise ValueError("give either weights (a file) or pretrained (the bundled weights), not both")
        if self.model_args and self.pretrained:
            raise ValueError("model_args cannot change a pretrained model (its bundled file fixes the architecture)")
        wrong = {
            "denoise": ("quality", "quality_range", "val_quality"),
            "jpeg": ("sigma", "sigma_range", "val_sigma"),
            "demosaic": ("sigma", "sigma_range", "val_sigma", "quality", "quality_range", "val_quality"),
            "sr": ("sigma", "sigma_range", "val_sigma", "quality", "quality_range", "val_quality"),
        }[self.task]
        given = [n for n in wrong if getattr(self, n) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} does not apply to task {self.task!r}")
        if self.sigma is not None and self.sigma_range is not None:
            raise ValueError("give sigma (fixed) or sigma_range (blind), not both")
        if self.quality is not None and self.quality_range is not None:
            raise ValueError("give quality (fixed) or quality_range (blind), not both")
        for name in ("sigma_range", "quality_range"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (list, tuple)) and len(v) == 2):
                raise ValueError(f"{name} must be two numbers (low, high), got {v!r}")
        if self.scale is not None:
            if self.task != "sr":
                raise ValueError(f"scale applies to task 'sr' only, got task {self.task!r}")
            if self.scale not in SR_SCALES:
                raise ValueError(f"scale must be one of {SR_SCALES}, got {self.scale!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_real(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")


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
