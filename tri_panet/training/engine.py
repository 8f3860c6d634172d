"""The training engine (:class:`Trainer`) and the evaluation shared with ``tri-panet eval``.

Training: L1 loss, Adam, linear warmup then a cosine / step / constant schedule, optional
global gradient-norm clipping, bf16/fp16 autocast on GPU (fp16 with a GradScaler),
validation PSNR/SSIM on a held-out folder, a tqdm bar with loss and images/s, atomic
checkpoints (:mod:`.checkpoint`), exact resumption, and DistributedDataParallel under
``torchrun`` (:mod:`.distributed`).

Exact resumption. Which samples step ``s`` trains on is a pure function of
(``seed``, ``s``, rank, world size): :class:`StepBatchSampler` maps the step to an epoch
and a slice of that epoch's seeded permutation, and ``RestorationDataset`` draws each
sample's crop, flips and noise from (``seed``, epoch, index). The model, Adam moments,
LR scheduler, grad scaler and RNG states come back from the checkpoint, so a run killed
after its checkpoint at step k and resumed computes the same steps k+1, ... as a run
that was never interrupted (bit for bit on the same machine and thread count).

Metric conventions (``metric_convention``): denoise and demosaic on RGB without a border
crop; jpeg on the Y channel; sr on the Y channel with ``crop_border = scale``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._files import write_text_atomic
from ..data.dataset import RestorationDataset, sample_generator
from ..data.degradations import bicubic_upsample, bilinear_demosaic, make_degradation, modcrop
from ..data.io import list_images, load_image
from ..inference import restore
from ..metrics import psnr, ssim
from ..models import create, load_pretrained, load_weights, model_info, read_metadata
from ..models.weights import load_state_into, load_state_file
from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_mean, barrier, dist_info

__all__ = [
    "Trainer",
    "build_model",
    "metric_convention",
    "baseline",
    "EvalPair",
    "prepare_eval_pairs",
    "evaluate",
    "StepBatchSampler",
    "lr_factor",
    "resolve_device",
]


# ---------------------------------------------------------------------------------------
# models, devices, conventions
# ---------------------------------------------------------------------------------------


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: ``cuda:<local_rank>`` when CUDA is available, else the CPU."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    return device


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
    """A model for training or inference.

    - ``pretrained``: the registry model ``name`` with its bundled weights (``load_pretrained``);
    - ``weights``: a ``.safetensors`` written by ``save_weights`` (rebuilt from its metadata
      unless ``model_args`` are given) or an official ``.pth`` / ``.pt`` (``name`` required:
      it gives the architecture; read with ``torch.load(weights_only=True)``);
    - neither: a freshly initialised ``create(name, **model_args)``.
    ``task``, when given, must be the registry task of the model (ValueError otherwise).
    The model's ``model_name`` attribute holds its registry name.
    """
    model_args = dict(model_args or {})
    if pretrained:
        if name is None:
            raise ValueError("pretrained weights need a model name (--model NAME)")
        model = load_pretrained(name, backend=backend)
    elif weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
        meta = read_metadata(path) if path.suffix == ".safetensors" else {}
        if not model_args and (meta.get("tri_panet.model") or meta.get("tri_panet.class")):
            model = load_weights(path, backend=backend, strict=strict)
            if name is not None and getattr(model, "model_name", None) not in (None, "", name):
                raise ValueError(f"{path} holds model {model.model_name!r}, not {name!r}")
        else:
            if name is None:
                raise ValueError(
                    f"{path} does not say which model it holds; name the architecture with --model NAME"
                )
            model = create(name, backend=backend, **model_args)
            load_state_into(model, load_state_file(path), strict=strict, source=str(path))
    else:
        if name is None:
            raise ValueError("no model given: pass a registry name (--model NAME) or a weights file")
        model = create(name, backend=backend, **model_args)
    model_name = getattr(model, "model_name", None) or name
    if task is not None and model_name:
        have = model_info(model_name)["task"]
        if have != task:
            raise ValueError(f"model {model_name!r} is made for task {have!r}, not {task!r}")
    return model


def metric_convention(task: str, scale: int = 1) -> dict:
    """``psnr``/``ssim`` keyword arguments of the task's published convention."""
    if task in ("denoise", "demosaic"):
        return {"crop_border": 0, "y_channel": False}
    if task == "jpeg":
        return {"crop_border": 0, "y_channel": True}
    if task == "sr":
        return {"crop_border": int(scale), "y_channel": True}
    raise ValueError(f"unknown task {task!r}")


def baseline(task: str, degraded: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """What the model is compared with: the degraded input itself (denoise, jpeg), bilinear
    demosaicing of the mosaic, or bicubic upsampling of the LR image (sr)."""
    if task == "demosaic":
        return bilinear_demosaic(degraded)
    if task == "sr":
        return bicubic_upsample(degraded, scale)
    return degraded


# ---------------------------------------------------------------------------------------
# evaluation (validation during training and `tri-panet eval`)
# ---------------------------------------------------------------------------------------


@dataclass
class EvalPair:
    """One evaluation image: ``name``, ``degraded`` model input and clean ``target`` ([C, H, W])."""

    name: str
    degraded: torch.Tensor
    target: torch.Tensor
    params: dict


def _center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    th, tw = min(size, h), min(size, w)
    top, left = (h - th) // 2, (w - tw) // 2
    return img[..., top : top + th, left : left + tw]


def prepare_eval_pairs(
    paths: Sequence[str | os.PathLike],
    task: str,
    degradation,
    *,
    color: bool = True,
    seed: int = 0,
    crop: int | None = None,
    scale: int = 1,
) -> list[EvalPair]:
    """Load each clean image, optionally centre-crop it to ``crop``, and degrade it with a
    generator seeded from (``seed``, 0, image index) (``sample_generator``): the same
    degraded inputs on every run. For sr the target is cropped to a multiple of ``scale``
    (``modcrop``); ``crop`` must then be a multiple of ``scale`` too."""
    pairs = []
    for i, p in enumerate(paths):
        clean = load_image(p, color=color)
        if crop is not None:
            clean = _center_crop(clean, crop)
        if task == "sr":
            clean = modcrop(clean, scale)
        g = sample_generator(seed, 0, i)
        degraded = degradation(clean, g)
        params = degradation.last_params[0] if getattr(degradation, "last_params", None) else {}
        pairs.append(EvalPair(Path(p).name, degraded, clean, dict(params)))
    return pairs


def evaluate(
    model: nn.Module,
    pairs: Sequence[EvalPair],
    task: str,
    *,
    scale: int = 1,
    tile: int | None = None,
    tile_overlap: int = 16,
    self_ensemble: bool = False,
    dtype: torch.dtype | None = None,
    with_ssim: bool = True,
    progress: bool = False,
    on_image: Callable[[dict], None] | None = None,
) -> dict:
    """Restore every pair with ``tri_panet.inference.restore`` and score it with the
    task's convention against the target; the degraded input (or the classical
    ``baseline``) is scored too.

    Returns dict(rows=[dict(image, input_psnr, input_ssim, model_psnr, model_ssim,
    seconds)], mean=dict(...), convention=dict(crop_border, y_channel)). ``on_image`` is
    called with each row as soon as it is ready.
    """
    from tqdm.auto import tqdm

    conv = metric_convention(task, scale)
    rows = []
    bar = tqdm(pairs, desc="eval", unit="img", disable=not progress, file=sys.stderr, leave=False)
    for pair in bar:
        t0 = time.perf_counter()
        out = restore(model, pair.degraded, tile=tile, tile_overlap=tile_overlap, self_ensemble=self_ensemble, dtype=dtype)
        seconds = time.perf_counter() - t0
        base = baseline(task, pair.degraded, scale)
        row = {
            "image": pair.name,
            "input_psnr": float(psnr(base[None], pair.target[None], **conv)[0]),
            "model_psnr": float(psnr(out[None].cpu(), pair.target[None], **conv)[0]),
        }
        if with_ssim:
            row["input_ssim"] = float(ssim(base[None], pair.target[None], **conv)[0])
            row["model_ssim"] = float(ssim(out[None].cpu(), pair.target[None], **conv)[0])
        row["seconds"] = seconds
        rows.append(row)
        if on_image is not None:
            on_image(row)
    keys = [k for k in ("input_psnr", "input_ssim", "model_psnr", "model_ssim", "seconds") if rows and k in rows[0]]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return {"rows": rows, "mean": mean, "convention": conv}


# ---------------------------------------------------------------------------------------
# data order
# ---------------------------------------------------------------------------------------


class StepBatchSampler:
    """Batches of (epoch, index) for steps ``start``..``end``-1 of this rank.

    Step ``s`` takes global batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``
    from a permutation of ``range(length)`` seeded by (``seed``, epoch); rank ``r`` takes
    its ``batch_size`` slice of that global batch (rank-sharded sampling, every sample seen
    once per epoch across ranks). A pure function of the step: resuming needs no state.
    """

    def __init__(self, length: int, batch_size: int, *, seed: int, start: int, end: int, rank: int = 0, world_size: int = 1):
        self.global_batch = batch_size * world_size
        if length < self.global_batch or length % self.global_batch:
            raise ValueError(f"length ({length}) must be a positive multiple of the global batch ({self.global_batch})")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.start, self.end, self.rank = start, end, rank
        self.steps_per_epoch = length // self.global_batch
        self._cached: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch``."""
        if self._cached is None or self._cached[0] != epoch:
            # a tag word keeps this stream apart from the dataset's (seed, epoch, index) streams
            state = np.random.SeedSequence([int(self.seed) & 0xFFFFFFFF, int(epoch), 0x5A3B1E]).generate_state(2, np.uint32)
            g = torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))
            self._cached = (epoch, torch.randperm(self.length, generator=g))
        return self._cached[1]

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This rank's (epoch, index) pairs of ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        g0 = k * self.global_batch + self.rank * self.batch_size
        return [(epoch, int(i)) for i in self.permutation(epoch)[g0 : g0 + self.batch_size]]

    def __iter__(self):
        for s in range(self.start, self.end):
            yield self.batch(s)

    def __len__(self) -> int:
        return max(self.end - self.start, 0)


class _EpochIndexed(Dataset):
    """Indexes ``RestorationDataset`` by (epoch, index), so that DataLoader workers (which
    hold copies of the dataset) draw the right epoch without shared state."""

    def __init__(self, dataset: RestorationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` after ``step`` optimiser steps: linear warmup over
    ``warmup_steps``, then cosine decay to ``lr_min`` at ``steps``, or x ``lr_gamma`` every
    ``lr_step`` steps, or constant."""
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


# ---------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------


class Trainer:
    """Train ``config`` (see :class:`TrainConfig`); call :meth:`fit`.

    ``command``: the command line recorded in the weights' metadata and the log.
    ``hooks``: callables ``hook(trainer, step)`` run after each step (after its
    validation and checkpoint), e.g. to stop early; an exception they raise ends the run
    like a kill would (the last checkpoint stays). ``trainer.model`` is the bare model
    (not the DDP wrapper).
    """

    def __init__(self, config: TrainConfig, *, command: str | None = None, hooks: Sequence[Callable] = ()):
        config.validate()
        self.config = config
        self.command = command
        self.hooks = list(hooks)
        self.dist: DistInfo = dist_info()
        self.step = 0
        self.history: list[dict] = []

    # ------------------------------------------------------------------ setup

    @property
    def out_dir(self) -> Path:
        return self.config.out_dir

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def weights_path(self) -> Path:
        """Where the final weights go: ``OUT/model.safetensors``."""
        return self.out_dir / "model.safetensors"

    def _log(self, message: str) -> None:
        if self.dist.is_main:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def _log_json(self, record: dict) -> None:
        self.history.append(record)
        if self.dist.is_main:
            with open(self.out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _setup(self) -> None:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device (use bf16 or none on the CPU)")
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]

        # refuse to mix a new run into an old run's folder
        previous = ckpt.find_latest(self.ckpt_dir)
        if not cfg.resume and (previous is not None or self.weights_path.exists()):
            raise FileExistsError(
                f"{self.out_dir} already holds a run; pass --resume to continue it, or choose another --out"
            )

        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.model = build_model(
            # a weights file names its own model; the task's default would only be a guess
            cfg.model if cfg.weights else cfg.model_name,
            weights=cfg.weights,
            pretrained=cfg.pretrained,
            model_args=cfg.model_args,
            backend=cfg.backend,
            strict=cfg.strict_weights,
            task=cfg.task,
        ).to(self.device)
        self.model.train()
        self.scale = int(getattr(self.model, "scale", 1))
        if cfg.task == "sr" and cfg.scale is not None and cfg.scale != self.scale:
            raise ValueError(f"scale {cfg.scale} differs from the model's scale {self.scale}")
        if cfg.task == "sr":
            cfg.scale = self.scale
        n_colors = int(getattr(self.model, "n_colors", 3))
        self.color = n_colors == 3 if cfg.color is None else bool(cfg.color)
        if self.color != (n_colors == 3):
            raise ValueError(f"color={cfg.color} does not match the model's n_colors={n_colors}")

        # data
        if not cfg.data:
            raise ValueError("no training data: give one or more image folders (--data DIR ...)")
        degradation = make_degradation(cfg.task, **cfg.degradation_kwargs())
        n_images = sum(len(list_images(d)) for d in cfg.data)
        global_batch = cfg.batch_size * self.dist.world_size
        # whole global batches per epoch, every image at least once
        length = math.ceil(n_images / global_batch) * global_batch
        self.dataset = RestorationDataset(
            cfg.data,
            cfg.task,
            patch_size=cfg.patch_size,
            color=self.color,
            degradation=degradation,
            scale=self.scale,
            augment=True,
            seed=cfg.seed,
            length=length,
        )

        # optimisation
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")

        self.wall_before = 0.0
        if cfg.resume and previous is not None:
            state = ckpt.load_checkpoint(previous, self.model, self.optimizer, self.scheduler, self.scaler)
            self.step = int(state["step"])
            extra = state.get("extra") or {}
            self.wall_before = float(extra.get("wall_time_s", 0.0))
            changed = _changed_settings(extra.get("config") or {}, cfg.to_dict())
            if changed:
                self._log(f"warning: settings differ from the checkpoint's: {', '.join(changed)}")
            self._log(f"resumed from {previous} at step {self.step}")
        elif cfg.resume:
            self._log(f"no checkpoint in {self.ckpt_dir}; starting from step 0")

        self.ddp = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

        self.val_pairs: list[EvalPair] = []
        if cfg.val and self.dist.is_main:
            paths = list_images(cfg.val)
            if cfg.val_limit:
                paths = paths[: cfg.val_limit]
            crop = cfg.val_crop
            if crop is not None and cfg.task == "sr":
                crop -= crop % self.scale
            val_deg = make_degradation(cfg.task, **cfg.val_degradation_kwargs())
            self.val_pairs = prepare_eval_pairs(
                paths, cfg.task, val_deg, color=self.color, seed=cfg.seed, crop=crop, scale=self.scale
            )

        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.out_dir / "config.toml", cfg.to_toml())

    # ------------------------------------------------------------------ pieces

    def validate(self) -> dict:
        """Mean PSNR/SSIM of the model on the validation pairs (rank 0; {} without pairs)."""
        if not self.val_pairs:
            return {}
        dtype = self.amp_dtype if self.device.type == "cuda" else None
        res = evaluate(self.model, self.val_pairs, self.config.task, scale=self.scale, tile=self.config.val_tile, dtype=dtype)
        return res["mean"]

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of the current step (rank 0 only)."""
        if not self.dist.is_main:
            return None
        extra = {"config": self.config.to_dict(), "wall_time_s": self.wall_time(), "command": self.command or ""}
        return ckpt.save_checkpoint(
            self.ckpt_dir,
            self.step,
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            extra=extra,
            metadata=self._weights_metadata(),
            keep=self.config.keep_checkpoints,
        )

    def wall_time(self) -> float:
        """Training seconds so far, earlier (resumed) sessions included."""
        return self.wall_before + (time.perf_counter() - self._t_start)

    def _weights_metadata(self) -> dict:
        meta = {
            "tri_panet.train.steps": str(self.step),
            "tri_panet.train.config": json.dumps(self.config.to_dict()),
            "tri_panet.train.command": self.command or "",
            "tri_panet.train.world_size": str(self.dist.world_size),
        }
        val = [h for h in self.history if "val_psnr" in h]
        if val:
            meta["tri_panet.train.val"] = json.dumps(val[-1])
        return meta

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict:
        """Train until ``config.steps``; returns dict(step, loss, val, weights, wall_time_s)."""
        from tqdm.auto import tqdm

        self._t_start = time.perf_counter()
        self._setup()
        cfg, dist_ = self.config, self.dist
        sampler = StepBatchSampler(
            len(self.dataset),
            cfg.batch_size,
            seed=cfg.seed,
            start=self.step,
            end=cfg.steps,
            rank=dist_.rank,
            world_size=dist_.world_size,
        )
        loader = DataLoader(
            _EpochIndexed(self.dataset),
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        global_batch = cfg.batch_size * dist_.world_size
        name = getattr(self.model, "model_name", None) or cfg.model_name
        tty = sys.stderr.isatty()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=f"train {name}",
            unit="step",
            disable=not (cfg.progress and dist_.is_main),
            dynamic_ncols=True,
            mininterval=0.5 if tty else 30.0,
            file=sys.stderr,
        )
        if dist_.is_main:
            self._log(
                f"training {name} ({sum(p.numel() for p in self.model.parameters())} params) on "
                f"{len(self.dataset.paths)} images, {cfg.task}, steps {self.step}->{cfg.steps}, batch {cfg.batch_size}"
                f"x{dist_.world_size}, patch {cfg.patch_size}, device {self.device}, out {self.out_dir}"
            )
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        )
        loss_sum = torch.zeros((), device=self.device)
        n_sum = 0
        last_loss = float("nan")
        t_log = time.perf_counter()
        imgs_per_s = 0.0
        last_ckpt = None
        try:
            for batch in loader:
                x = batch["input"].to(self.device, non_blocking=True)
                y = batch["target"].to(self.device, non_blocking=True)
                with autocast:
                    out = self.ddp(x)
                loss = F.l1_loss(out.float(), y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss is {loss.item()} at step {self.step + 1}; lower --lr or set --grad-clip "
                        f"(last checkpoint: {ckpt.find_latest(self.ckpt_dir)})"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.step += 1
                loss_sum += loss.detach()
                n_sum += 1
                bar.update(1)

                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    mean_loss = float(all_reduce_mean(loss_sum / n_sum))
                    now = time.perf_counter()
                    imgs_per_s = n_sum * global_batch / max(now - t_log, 1e-9)
                    t_log, loss_sum, n_sum = now, torch.zeros((), device=self.device), 0
                    last_loss = mean_loss
                    lr = self.optimizer.param_groups[0]["lr"]
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{imgs_per_s:.1f}", lr=f"{lr:.2e}")
                    self._log_json(
                        {"step": self.step, "loss": mean_loss, "lr": lr, "img_per_s": imgs_per_s, "wall_s": self.wall_time()}
                    )
                    if bar.disable or not tty:  # plain lines for logs (a bar in a file is unreadable)
                        self._log(f"step {self.step}/{cfg.steps} loss {mean_loss:.5f} lr {lr:.2e} {imgs_per_s:.2f} img/s")

                # the same decisions on every rank; the writing happens on rank 0
                sync = False
                if cfg.val and ((cfg.val_every and self.step % cfg.val_every == 0) or self.step == cfg.steps):
                    sync = True
                    if self.val_pairs:
                        val = self.validate()
                        self._log_json({"step": self.step, "val_psnr": val["model_psnr"], "val_ssim": val.get("model_ssim"),
                                        "val_input_psnr": val["input_psnr"]})
                        bar.clear()
                        self._log(
                            f"step {self.step}: validation PSNR {val['model_psnr']:.3f} dB "
                            f"(input {val['input_psnr']:.3f} dB) on {len(self.val_pairs)} image(s)"
                        )
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    sync = True
                    last_ckpt = self.save_checkpoint()
                if sync:
                    barrier()  # the other ranks wait while rank 0 validates / writes
                for hook in self.hooks:
                    hook(self, self.step)
        finally:
            bar.close()

        if self.step < cfg.steps:  # pragma: no cover - the loader always yields every step
            raise RuntimeError(f"training stopped at step {self.step} of {cfg.steps}")
        if last_ckpt is None and dist_.is_main and self.step == cfg.steps:
            # nothing ran (resumed a finished run): make sure the final checkpoint exists
            last_ckpt = ckpt.find_latest(self.ckpt_dir) or self.save_checkpoint()
        weights = None
        if dist_.is_main:
            from ..models import save_weights

            meta = self._weights_metadata()
            meta["tri_panet.train.wall_time_s"] = f"{self.wall_time():.1f}"
            weights = save_weights(self.model, self.weights_path, metadata=meta, overwrite=True)
            self._log(f"done: {self.step} steps in {self.wall_time():.1f} s; weights: {weights}")
        barrier()
        val = [h for h in self.history if "val_psnr" in h]
        return {
            "step": self.step,
            "loss": last_loss,
            "val": val[-1] if val else None,
            "weights": str(weights) if weights else None,
            "checkpoint": str(last_ckpt) if last_ckpt else None,
            "wall_time_s": self.wall_time(),
        }


_RESUME_IGNORED = {"resume", "steps", "val_every", "ckpt_every", "log_every", "progress", "keep_checkpoints", "num_workers",
                   "val", "val_limit", "val_crop", "val_tile", "val_sigma", "val_quality", "threads", "device"}


def _changed_settings(old: dict, new: dict) -> list[str]:
    """Settings that change the training itself between a checkpoint and a resumed run."""
    return sorted(k for k in new if k not in _RESUME_IGNORED and k in old and old[k] != new[k])

