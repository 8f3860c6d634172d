"""The training engine: :class:`Trainer`.

Training: L1 (or Charbonnier) loss, Adam, linear warmup then a cosine / step / constant schedule
(:mod:`.schedule`), optional global gradient-norm clipping, bf16/fp16 autocast on GPU (fp16
with a GradScaler), validation PSNR/SSIM on a held-out folder (:mod:`tri_panet.evaluation`),
a tqdm bar with loss and images/s, atomic checkpoints (:mod:`.checkpoint`), exact
resumption, and DistributedDataParallel under ``torchrun`` (:mod:`.distributed`).

Exact resumption. Which samples step ``s`` trains on is a pure function of
(``seed``, ``s``, rank, world size): :class:`~.sampler.StepBatchSampler` maps the step to
an epoch and a slice of that epoch's seeded permutation, and ``RestorationDataset`` draws
each sample's crop, flips and noise from (``seed``, epoch, index). The model, Adam
moments, LR scheduler, grad scaler and RNG states come back from the checkpoint, so a run
killed after its checkpoint at step k and resumed computes the same steps k+1, ... as a
run that was never interrupted: bit for bit on the same machine and thread count when the
computation is deterministic, as on a CPU (the attention's torch backend). On a GPU it is
not: the Triton attention kernels accumulate with float32 atomics (and cuDNN may pick
non-deterministic kernels), whose order varies from run to run, so a resumed run there
matches an uninterrupted one only to rounding, as two uninterrupted runs do.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .._files import check_can_create, write_text_atomic
from ..cost import CostModel
from ..data.io import list_images, loss_notes, read_header
from ..device import choose_threads, resolve_device
from ..evaluation import EvalPair, evaluate, prepare_eval_pairs
from ..models import build_model, copy_matching, describe, load_state_file, save_weights
from ..tasks import make_degradation
from . import checkpoint as ckpt
from .config import TrainConfig
from .dataset import RestorationDataset
from .distributed import DistInfo, all_reduce_mean, barrier, dist_info
from .losses import LOSSES
from .sampler import EpochIndexed, StepBatchSampler
from .schedule import lr_factor

__all__ = ["Trainer"]

_AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    """Train ``config`` (see :class:`TrainConfig`): ``Trainer(config).fit()``.

    The constructor prepares the whole run: device, model, training data, optimiser, the
    state of the last checkpoint (with ``config.resume``) and the validation images; it
    creates the run folder and writes ``OUT/config.toml``. So :meth:`validate`,
    :meth:`save_checkpoint` and every attribute are usable before :meth:`fit`.

    The run folder must be new, empty, or (with ``config.resume``) the one to continue;
    ``force`` starts a run again in a folder that holds one (its checkpoints, log, config
    and weights are deleted first; other files stay).

    ``command``: the command line recorded in the weights' metadata and the log.
    ``hooks``: callables ``hook(trainer, step)`` run after each step (after its
    validation and checkpoint), e.g. to stop early; an exception they raise ends the run
    like a kill would (the last checkpoint stays). ``trainer.model`` is the bare model
    (``trainer.ddp`` the DistributedDataParallel wrapper, or the model itself).
    """

    def __init__(
        self, config: TrainConfig, *, command: str | None = None, hooks: Sequence[Callable] = (), force: bool = False
    ):
        config.validate()
        config.resolve_paths()  # OUT/config.toml then means the same from any working folder
        self.config = config
        self.command = command
        self.hooks = list(hooks)
        self.dist: DistInfo = dist_info()
        self.history: list[dict] = []  # the records of log.jsonl: losses and validations
        self.step = 0
        self.wall_before = 0.0  # training seconds of earlier sessions of a resumed run
        self.warm_start: str | None = None  # what init_from copied, logged when training starts
        self._t_start = time.perf_counter()
        self.out_dir: Path = config.out_dir
        self.ckpt_dir: Path = self.out_dir / "checkpoints"
        self.weights_path: Path = self.out_dir / "model.safetensors"  # the final weights

        torch.set_num_threads(choose_threads(config.threads or None))
        self.device = resolve_device(config.device, self.dist.local_rank)
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device (use bf16 or none on the CPU)")
        self.amp_dtype: torch.dtype | None = _AMP_DTYPES[config.amp]

        clear = self._check_run_folder(force)
        self.model = self._build_model()
        self.scale, self.color = self._image_format()
        # a patch size the machine cannot train: refused with the estimate, before the data is read
        CostModel(self.model, self.device).check_training(config.patch_size, config.batch_size)
        self.dataset = self._training_set()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16")
        if config.resume:
            self._resume()
        self.ddp = self._distributed()
        self.val_pairs: list[EvalPair] = self._validation_pairs()
        if self.dist.is_main:  # every check has passed: only now is the folder touched
            if clear:
                self._clear_run_folder()
            if config.resume:
                self._truncate_log()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.out_dir / "config.toml", config.to_toml())

    # ------------------------------------------------------------------ set-up steps

    #: What a run writes into its folder (removed by ``force``).
    RUN_FILES = ("checkpoints", "log.jsonl", "config.toml", "model.safetensors")

    def _check_run_folder(self, force: bool) -> bool:
        """Refuse a run folder that cannot be made or written, and one that holds files (a
        run, even one killed before its first checkpoint) unless resuming it or ``force``.
        Returns whether the old run's files are to be deleted (``force``; done by
        :meth:`_clear_run_folder` once every other check has passed)."""
        out = self.out_dir
        if self.config.resume and force:
            raise ValueError("give --resume (continue the run) or --force (start it again), not both")
        check_can_create(out)  # also refuses a file named like the folder
        if self.config.resume or not out.is_dir() or not any(out.iterdir()):
            return False
        if not force:
            raise FileExistsError(
                f"{out} already holds files (a run?); pass --resume to continue it, --force to "
                "start it again, or choose another --out"
            )
        return True

    def _clear_run_folder(self) -> None:
        """Delete what an earlier run wrote into the run folder (:attr:`RUN_FILES`), nothing else."""
        for name in self.RUN_FILES:
            path = self.out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def _build_model(self) -> nn.Module:
        """The model to train, on the device, in training mode."""
        cfg = self.config
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        try:
            model = build_model(
                # a weights file names its own model; the task's default would only be a guess
                cfg.model if cfg.weights else cfg.model_name,
                weights=cfg.weights,
                pretrained=cfg.pretrained,
                model_args=cfg.model_args,
                backend=cfg.backend,
                strict=cfg.strict_weights,
                task=cfg.task,
            )
        except TypeError as e:  # an argument the constructor does not take, or of the wrong type
            if not cfg.model_args:
                raise
            raise ValueError(f"model_args: {e}") from None
        if cfg.init_from is not None:
            kept = copy_matching(model, load_state_file(cfg.init_from), source=cfg.init_from)
            total = len(model.state_dict())
            self.warm_start = (
                f"warm start from {cfg.init_from}: {total - len(kept)} of {total} tensors copied; "
                f"left as initialised: {', '.join(kept) or 'none'}"
            )
        return model.to(self.device).train()

    def _image_format(self) -> tuple[int, bool]:
        """The model's SR factor and whether it takes colour, checked against the settings."""
        cfg, info = self.config, describe(self.model)
        if cfg.scale is not None and cfg.scale != info.scale:
            raise ValueError(f"scale {cfg.scale} differs from the model's scale {info.scale}")
        if info.scale > 1:
            cfg.scale = info.scale  # recorded in OUT/config.toml and in the weights' metadata
        color = info.n_colors == 3 if cfg.color is None else bool(cfg.color)
        if color != (info.n_colors == 3):
            raise ValueError(f"color={cfg.color} does not match the model's n_colors={info.n_colors}")
        return info.scale, color

    def _training_set(self) -> RestorationDataset:
        """The training patches: whole global batches per epoch, every image at least once.
        Every image is decoded here (an unreadable one fails now, not when first sampled)."""
        cfg = self.config
        if not cfg.data:
            raise ValueError("no training data: give one or more image folders (--data DIR ...)")
        n_images = sum(len(list_images(d)) for d in cfg.data)
        global_batch = cfg.batch_size * self.dist.world_size
        dataset = RestorationDataset(
            cfg.data,
            cfg.task,
            patch_size=cfg.patch_size,
            color=self.color,
            degradation=make_degradation(cfg.task, **cfg.degradation_kwargs()),
            scale=self.scale,
            augment=True,
            seed=cfg.seed,
            length=math.ceil(n_images / global_batch) * global_batch,
        )
        headers = dataset.check_images(progress=cfg.progress and self.dist.is_main)
        for line in loss_notes(headers, self.color):
            self._log(line)
        return dataset

    def _resume(self) -> None:
        """Load model, optimiser, schedule, scaler and RNG states from the newest intact
        checkpoint (a damaged newer one is skipped with a warning), then apply the settings
        of this run to the optimiser and the schedule."""
        found = ckpt.load_latest(self.ckpt_dir, self.model, self.optimizer, self.scheduler, self.scaler, warn=self._log)
        if found is None:
            self._log(f"no checkpoint in {self.ckpt_dir}; starting from step 0")
        else:
            previous, state = found
            self.step = int(state["step"])
            extra = state.get("extra") or {}
            self.wall_before = float(extra.get("wall_time_s", 0.0))
            self._apply_optimizer_settings()
            changed = _changed_settings(extra.get("config") or {}, self.config.to_dict())
            if changed:
                self._log(
                    f"warning: settings differ from the checkpoint's (applied from step {self.step} on): "
                    f"{', '.join(changed)}"
                )
            self._log(f"resumed from {previous} at step {self.step}")

    def _apply_optimizer_settings(self) -> None:
        """Give the optimiser and the schedule this run's settings: a checkpoint restores
        the learning rate, betas and weight decay it was written with, and the schedule's
        base rate, which would mix with a changed ``lr`` (``lr_factor`` reads the new one)."""
        cfg = self.config
        self.scheduler.base_lrs = [cfg.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group.update(
                initial_lr=cfg.lr,
                lr=cfg.lr * lr_factor(self.step, cfg),
                betas=tuple(cfg.betas),
                weight_decay=cfg.weight_decay,
            )

    def _truncate_log(self) -> None:
        """Drop the records of ``log.jsonl`` after the resumed step (those of a killed run
        past its last checkpoint, which the resumed run writes again), and a torn last line."""
        path = self.out_dir / "log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= self.step:
                kept.append(line + "\n")
        write_text_atomic(path, "".join(kept))

    def _distributed(self) -> nn.Module:
        """The model wrapped in DistributedDataParallel when several processes train."""
        if not self.dist.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _validation_pairs(self) -> list[EvalPair]:
        """The degraded validation images (rank 0 only; none without ``config.val``)."""
        cfg = self.config
        if not (cfg.val and self.dist.is_main):
            return []
        paths = list_images(cfg.val)[: cfg.val_limit or None]
        for line in loss_notes([read_header(p) for p in paths], self.color):
            self._log(line)
        crop = None if cfg.val_crop is None else cfg.val_crop - cfg.val_crop % self.scale  # whole SR factors
        degradation = make_degradation(cfg.task, **cfg.val_degradation_kwargs())
        return prepare_eval_pairs(paths, degradation, color=self.color, seed=cfg.seed, crop=crop)

    # ------------------------------------------------------------------ pieces

    def validate(self) -> dict:
        """Mean PSNR/SSIM of the model on the validation pairs (rank 0; {} without pairs)."""
        if not self.val_pairs:
            return {}
        dtype = self.amp_dtype if self.device.type == "cuda" else None
        return evaluate(self.model, self.val_pairs, self.config.task, tile=self.config.val_tile, dtype=dtype)["mean"]

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
        """Seconds of this session (since the Trainer was made) plus those of earlier ones."""
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

    def _log(self, message: str) -> None:
        """A line on stdout (rank 0), printed above the progress bar."""
        if self.dist.is_main:
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def _log_json(self, record: dict) -> None:
        """Keep ``record`` in :attr:`history` and append it to OUT/log.jsonl (rank 0)."""
        self.history.append(record)
        if self.dist.is_main:
            with open(self.out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        """Train from :attr:`step` to :attr:`end_step`; returns dict(step, loss, val,
        weights, checkpoint, wall_time_s) (``loss``: the last logged mean training loss;
        ``weights`` None when the run stopped at ``stop_at`` before ``steps``)."""
        cfg = self.config
        bar = self._progress_bar()
        if self.dist.is_main:
            self._log(
                f"training {self._name()} ({sum(p.numel() for p in self.model.parameters())} params) on "
                f"{len(self.dataset.paths)} images, {cfg.task}, steps {self.step}->{cfg.steps}, batch {cfg.batch_size}"
                f"x{self.dist.world_size}, patch {cfg.patch_size}, device {self.device}, out {self.out_dir}"
            )
            if self.warm_start and self.step == 0:
                self._log(self.warm_start)
        window = _LossWindow(self.device)
        last_ckpt = None
        try:
            for batch in self._loader():
                window.add(self._train_step(batch))
                self.step += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log_progress(window, bar)
                last_ckpt = self._validate_and_checkpoint(bar) or last_ckpt
                for hook in self.hooks:
                    hook(self, self.step)
        finally:
            bar.close()
        return self._finish(last_ckpt, window.last_mean)

    def _name(self) -> str:
        """The registry name of the model trained, for the log."""
        return describe(self.model).name or self.config.model_name

    def _progress_bar(self) -> tqdm:
        """The step bar on stderr (rank 0); redrawn rarely when stderr is a log file."""
        return tqdm(
            total=self.config.steps,
            initial=self.step,
            desc=f"train {self._name()}",
            unit="step",
            disable=not (self.config.progress and self.dist.is_main),
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
            file=sys.stderr,
        )

    @property
    def end_step(self) -> int:
        """The step this run stops after: ``stop_at`` (a stage of a longer run) or ``steps``."""
        return self.config.stop_at or self.config.steps

    def _loader(self) -> DataLoader:
        """The batches of steps :attr:`step`..:attr:`end_step`-1 of this rank."""
        cfg = self.config
        sampler = StepBatchSampler(
            len(self.dataset),
            cfg.batch_size,
            seed=cfg.seed,
            start=self.step,
            end=self.end_step,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        return DataLoader(
            EpochIndexed(self.dataset),
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _train_step(self, batch: dict) -> torch.Tensor:
        """One optimiser step on ``batch``; returns its loss (detached)."""
        x = batch["input"].to(self.device, non_blocking=True)
        y = batch["target"].to(self.device, non_blocking=True)
        autocast = nullcontext() if self.amp_dtype is None else torch.autocast(self.device.type, dtype=self.amp_dtype)
        with autocast:
            out = self.ddp(x)
        loss = LOSSES[self.config.loss](out.float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(self._divergence_message(loss.item()))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach()

    def _divergence_message(self, loss: float) -> str:
        """What happened when the loss became ``loss`` (inf or nan), what was saved, what to try."""
        last = ckpt.find_latest(self.ckpt_dir)
        saved = f"the last checkpoint is {last}" if last else "nothing was saved (no checkpoint yet)"
        lr = self.optimizer.param_groups[0]["lr"]
        clip = f"a --grad-clip below {self.config.grad_clip:g}" if self.config.grad_clip else "--grad-clip 1"
        again = "then --resume continues from it with the new values" if last else "then --force starts again"
        return (
            f"training diverged: the loss became {loss} at step {self.step + 1} (learning rate {lr:.3g}); {saved}; "
            f"try a lower --lr (it is {self.config.lr:g}) or {clip}, {again}"
        )

    def _log_progress(self, window: _LossWindow, bar: tqdm) -> None:
        """Log the mean loss (over all ranks) and the images/s since the last log line."""
        mean_loss, seconds, steps = window.take()
        imgs_per_s = steps * self.config.batch_size * self.dist.world_size / max(seconds, 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{imgs_per_s:.1f}", lr=f"{lr:.2e}")
        self._log_json(
            {"step": self.step, "loss": mean_loss, "lr": lr, "img_per_s": imgs_per_s, "wall_s": self.wall_time()}
        )
        if bar.disable or not sys.stderr.isatty():  # plain lines for logs (a bar in a file is unreadable)
            self._log(f"step {self.step}/{self.config.steps} loss {mean_loss:.5f} lr {lr:.2e} {imgs_per_s:.2f} img/s")

    def _validate_and_checkpoint(self, bar: tqdm) -> Path | None:
        """Validate and write a checkpoint when this step is due; returns the checkpoint written."""
        cfg = self.config
        final = self.step == cfg.steps
        # the same decisions on every rank; the work happens on rank 0
        validating = bool(cfg.val) and ((cfg.val_every and self.step % cfg.val_every == 0) or final)
        saving = self.step % cfg.ckpt_every == 0 or self.step == self.end_step  # the end of a run or stage
        if validating and self.val_pairs:
            val = self.validate()
            self._log_json(
                {
                    "step": self.step,
                    "val_psnr": val["model_psnr"],
                    "val_ssim": val.get("model_ssim"),
                    "val_input_psnr": val["input_psnr"],
                }
            )
            bar.clear()
            self._log(
                f"step {self.step}: validation PSNR {val['model_psnr']:.3f} dB "
                f"(input {val['input_psnr']:.3f} dB) on {len(self.val_pairs)} image(s)"
            )
        written = self.save_checkpoint() if saving else None
        if validating or saving:
            barrier()  # the other ranks wait while rank 0 validates / writes
        return written

    def _finish(self, last_ckpt: Path | None, last_loss: float) -> dict:
        """Write the final weights (rank 0) and sum the run up; a stage that stopped at
        ``stop_at`` before ``steps`` writes none (``weights`` None)."""
        cfg = self.config
        if self.step < self.end_step:  # pragma: no cover - the loader always yields every step
            raise RuntimeError(f"training stopped at step {self.step} of {self.end_step}")
        if last_ckpt is None and self.dist.is_main:
            # nothing ran (resumed a finished run or stage): make sure its checkpoint exists
            last_ckpt = ckpt.find_latest(self.ckpt_dir) or self.save_checkpoint()
        weights = None
        if self.dist.is_main:
            if self.step < cfg.steps:
                self._log(f"stopped at step {self.step} of {cfg.steps} (stop_at): continue with --resume")
            else:
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


class _LossWindow:
    """The losses since the last log line: summed on the device (no sync per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.last_mean = float("nan")
        self._reset()

    def _reset(self) -> None:
        self.total = torch.zeros((), device=self.device)
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss
        self.steps += 1

    def take(self) -> tuple[float, float, int]:
        """(mean loss over the window and all ranks, seconds, steps), then start a new window."""
        mean = float(all_reduce_mean(self.total / self.steps))
        seconds, steps = time.perf_counter() - self.t0, self.steps
        self.last_mean = mean
        self._reset()
        return mean, seconds, steps


#: Settings that may change when resuming without changing the training itself (besides
#: every validation setting, ``val*``).
_RESUME_IGNORED = {
    "resume",
    "steps",
    "stop_at",
    "ckpt_every",
    "log_every",
    "progress",
    "keep_checkpoints",
    "num_workers",
    "threads",
    "device",
    "out",
}


def _changed_settings(old: dict, new: dict) -> list[str]:
    """Settings that change the training itself between a checkpoint and a resumed run."""
    return sorted(
        k for k in new if k not in _RESUME_IGNORED and not k.startswith("val") and k in old and old[k] != new[k]
    )
