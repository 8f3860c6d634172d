"""``tri-panet train`` and ``tri-panet finetune``: settings from flags and a TOML file, then
``Trainer(config).fit()`` (single process or under ``torchrun``)."""

from __future__ import annotations

import argparse
import json

from ..tasks import LEVELS, SCALES, TASKS
from .common import BACKEND_HELP, CLIError, add_large_images_flag, task_help

#: finetune's default learning rate (train keeps TrainConfig's, 1e-3).
FINETUNE_LR = 5e-5

#: Namespace entries that are not TrainConfig fields (every other flag's destination is one).
_NOT_SETTINGS = {"command", "command_line", "func", "config", "model_arg", "force", "allow_large_images"}


def add_parser(sub) -> None:
    """Register ``train`` and ``finetune`` on the subcommand parsers ``sub``."""
    for name, finetune in (("train", False), ("finetune", True)):
        desc = (
            "Train a model from scratch (flags or --config TOML; flags win)."
            if not finetune
            else "Fine-tune a model from its bundled weights (--model) or a weights file (--weights)."
        )
        p = sub.add_parser(
            name,
            help=desc.split(" (")[0].rstrip("."),
            description=desc + " Checkpoints go to OUT/checkpoints, final weights to OUT/model.safetensors. "
            "Multi-process: torchrun --nproc_per_node N --no-python tri-panet " + name + " ...",
        )
        _add_flags(p, finetune)
        p.set_defaults(func=run_finetune if finetune else run_train)


def _add_flags(p: argparse.ArgumentParser, finetune: bool) -> None:
    S = argparse.SUPPRESS  # only flags actually given override the config file
    p.add_argument("--config", metavar="TOML", help="settings file (flags override it); see docs/TRAINING.md")
    g = p.add_argument_group("what")
    g.add_argument("--task", choices=TASKS, default=S, help=f"restoration task: {task_help()} (default: denoise)")
    g.add_argument("--model", metavar="NAME", default=S, help="registry name (default: fast-<task>)")
    if finetune:
        g.add_argument(
            "--weights",
            metavar="FILE",
            default=S,
            help="start from this .safetensors / official .pth (default: the bundled weights of --model)",
        )
    else:
        g.add_argument("--weights", metavar="FILE", default=S, help="initialise from this .safetensors / official .pth")
        g.add_argument(
            "--init-from",
            metavar="FILE",
            default=S,
            help="warm start: a fresh --model takes the tensors of FILE whose names and shapes fit "
            "(e.g. an x2 SR body for x3; the rest keep their initialisation)",
        )
        g.add_argument(
            "--model-arg",
            metavar="NAME=VALUE",
            action="append",
            default=S,
            help="constructor override of a fresh model, e.g. n_feats=16 (repeatable; VALUE is JSON)",
        )
    g.add_argument("--backend", default=S, help=BACKEND_HELP)
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", metavar="DIR", default=S, help="folders of clean training images (required)")
    g.add_argument("--val", metavar="DIR", default=S, help="folder of clean validation images")
    g.add_argument(
        "--val-limit", type=int, default=S, metavar="N", help="validate on the first N images (0: all; default 4)"
    )
    g.add_argument(
        "--val-crop", type=int, default=S, metavar="N", help="centre-crop validation images to N (default 128)"
    )
    g.add_argument("--val-tile", type=int, default=S, metavar="N", help="tiled validation")
    for level in LEVELS:
        g.add_argument(
            f"--val-{level.name}",
            type=level.type,
            default=S,
            help=f"validation {level.help} (default: --{level.name} or {level.fixed:g})",
        )
    g.add_argument("--patch-size", type=int, default=S, metavar="N", help="input patch side in px (default 48)")
    for level in LEVELS:
        tasks = ", ".join(t.name for t in TASKS.values() if t.level == level)
        g.add_argument(f"--{level.name}", type=level.type, default=S, help=f"fixed {level.help}")
        g.add_argument(
            f"--{level.name}-range",
            type=level.type,
            nargs=2,
            metavar=("LO", "HI"),
            default=S,
            help=f"blind range of the {level.help} (default for {tasks}: {level.blind[0]:g} {level.blind[1]:g})",
        )
    g.add_argument("--scale", type=int, choices=SCALES, default=S, help="SR factor (default: the model's)")
    g.add_argument("--clip-noise", action="store_true", default=S, help="clamp noisy inputs to [0, 1]")
    g.add_argument("--num-workers", type=int, default=S, help="DataLoader workers (default 0)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=S, help="optimiser steps (default 1000)")
    g.add_argument(
        "--stop-at",
        type=int,
        metavar="STEP",
        default=S,
        help="stop after STEP, checkpointed, and continue later with --resume (the schedule still follows --steps)",
    )
    g.add_argument("--batch-size", type=int, default=S, help="patches per step and process (default 8)")
    lr = "5e-5" if finetune else "1e-3"
    g.add_argument("--lr", type=float, default=S, help=f"Adam learning rate (default {lr})")
    g.add_argument("--lr-min", type=float, default=S, help="cosine floor (default 1e-6)")
    g.add_argument("--schedule", choices=("cosine", "step", "constant"), default=S, help="LR schedule (default cosine)")
    g.add_argument("--loss", choices=("l1", "charbonnier"), default=S, help="training loss (default l1)")
    g.add_argument("--warmup-steps", type=int, default=S, help="linear warmup steps (default 100)")
    g.add_argument("--lr-step", type=int, default=S, help="step schedule: decay every N steps (default steps/2)")
    g.add_argument("--lr-gamma", type=float, default=S, help="step schedule: decay factor (default 0.5)")
    g.add_argument("--weight-decay", type=float, default=S, help="Adam weight decay (default 0)")
    g.add_argument("--grad-clip", type=float, default=S, help="clip the global grad norm (default 1.0; 0: off)")
    g.add_argument("--amp", choices=("none", "bf16", "fp16"), default=S, help="mixed precision (GPU; default none)")
    g.add_argument("--device", default=S, help="auto, cpu, cuda (default auto)")
    g.add_argument("--threads", type=int, default=S, help="torch CPU threads (default: the free cores)")
    g.add_argument("--seed", type=int, default=S, help="seed of the initialisation and the data (default 0)")
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", default=S, help="run folder (default runs/<model>)")
    g.add_argument(
        "--resume", action="store_true", default=S, help="continue the run in --out from its last checkpoint"
    )
    g.add_argument(
        "--force",
        action="store_true",
        help="start the run again in an --out that holds one (deletes its checkpoints, log and weights)",
    )
    add_large_images_flag(g)
    g.add_argument("--ckpt-every", type=int, default=S, help="checkpoint every N steps (default 500)")
    g.add_argument("--keep-checkpoints", type=int, default=S, help="checkpoints kept (default 2)")
    g.add_argument("--val-every", type=int, default=S, help="validate every N steps (0: at the end; default 500)")
    g.add_argument("--log-every", type=int, default=S, help="log every N steps (default 10)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S, help="no progress bar")


def _parse_model_args(items) -> dict:
    """``--model-arg NAME=VALUE`` items as a dict (VALUE read as JSON, else kept as text)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise CLIError(f"--model-arg expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _config(args: argparse.Namespace, finetune: bool):
    """The TrainConfig of defaults < --config file < the flags given."""
    from ..training import TrainConfig, load_toml

    given = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    if hasattr(args, "model_arg"):
        given["model_args"] = _parse_model_args(args.model_arg)
    values = load_toml(args.config) if args.config else {}
    if finetune:
        values.setdefault("lr", FINETUNE_LR)
        # finetune starts from weights: a file, or the bundled weights of the model
        if "weights" not in given and not values.get("weights"):
            values["pretrained"] = True
    values.update(given)
    try:
        return TrainConfig.from_dict(values, source=args.config or "flags")
    except TypeError as e:  # a value of the wrong type: argparse converts flags, so it is the file's
        raise CLIError(f"{args.config}: {e}" if args.config else str(e)) from None


def _run(args: argparse.Namespace, finetune: bool) -> int:
    # imported here: restore, eval and demo never load the training code
    from ..training import Trainer, init_distributed
    from ..training.distributed import cleanup

    cfg = _config(args, finetune)
    info = init_distributed()
    try:
        result = Trainer(cfg, command=args.command_line, force=args.force).fit()
    except FloatingPointError as e:  # the loss became inf or nan: the message says what to try
        raise CLIError(str(e)) from None
    finally:
        cleanup()
    if info.is_main:
        val = result.get("val")
        tail = f", validation PSNR {val['val_psnr']:.3f} dB" if val else ""
        if result["weights"] is None:
            print(f"stopped at step {result['step']}: checkpoint {result['checkpoint']}; continue with --resume")
        else:
            seconds = result["wall_time_s"]
            print(f"trained {result['step']} steps in {seconds:.1f} s{tail}; weights: {result['weights']}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """``tri-panet train``."""
    return _run(args, finetune=False)


def run_finetune(args: argparse.Namespace) -> int:
    """``tri-panet finetune``: train from weights, default lr 5e-5."""
    return _run(args, finetune=True)
