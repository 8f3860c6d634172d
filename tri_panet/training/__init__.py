"""Training: the engine (:class:`Trainer`), its configuration (:class:`TrainConfig`), the
training dataset, the sample order, atomic checkpoints with exact resumption, and DDP
helpers for ``torchrun``.

Quick use::

    from tri_panet.training import TrainConfig, Trainer
    cfg = TrainConfig(task="denoise", model="tiny-denoise", data=["photos/"], val="val/",
                      sigma_range=[0, 55], steps=1000, batch_size=8, patch_size=48, out="runs/td")
    result = Trainer(cfg).fit()   # runs/td/model.safetensors, runs/td/checkpoints/...

The command line (``tri-panet train`` / ``finetune``) wraps exactly this; see docs/TRAINING.md.
Evaluation, model loading and device choice live outside this package
(:mod:`tri_panet.evaluation`, :func:`tri_panet.models.build_model`,
:mod:`tri_panet.device`), so inference never imports it.
"""

from .checkpoint import find_latest, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig, load_toml
from .dataset import RestorationDataset
from .distributed import DistInfo, dist_info, init_distributed, launch_cpu
from .engine import Trainer
from .sampler import StepBatchSampler
from .schedule import lr_factor

__all__ = [
    "TrainConfig",
    "Trainer",
    "RestorationDataset",
    "load_toml",
    "lr_factor",
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
