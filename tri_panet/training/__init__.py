"""Training: the engine (:class:`Trainer`), its configuration (:class:`TrainConfig`),
atomic checkpoints with exact resumption, and DDP helpers for ``torchrun``.

Quick use::

    from tri_panet.training import TrainConfig, Trainer
    cfg = TrainConfig(task="denoise", model="tiny-denoise", data=["photos/"], val="val/",
                      sigma_range=[0, 55], steps=1000, batch_size=8, patch_size=48, out="runs/td")
    result = Trainer(cfg).fit()   # runs/td/model.safetensors, runs/td/checkpoints/...

The command line (``tri-panet train`` / ``finetune``) wraps exactly this; see docs/TRAINING.md.
"""

from .checkpoint import find_latest, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig, default_model_for, load_toml
from .distributed import DistInfo, dist_info, init_distributed, launch_cpu
from .engine import (
    EvalPair,
    StepBatchSampler,
    Trainer,
    baseline,
    build_model,
    evaluate,
    lr_factor,
    metric_convention,
    prepare_eval_pairs,
    resolve_device,
)

__all__ = [
    "TrainConfig",
    "Trainer",
    "default_model_for",
    "load_toml",
    "build_model",
    "evaluate",
    "prepare_eval_pairs",
    "EvalPair",
    "baseline",
    "metric_convention",
    "lr_factor",
    "resolve_device",
    "StepBatchSampler",
    "save_checkpoint",
    "load_checkpoint",
    "find_latest",
    "list_checkpoints",
    "DistInfo",
    "dist_info",
    "init_distributed",
    "launch_cpu",
]
