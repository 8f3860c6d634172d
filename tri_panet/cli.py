"""The ``tri-panet`` command line: restore, eval, train, finetune, bench, demo, models.

Every subcommand has ``--help``. User errors (unreadable images, wrong channel counts,
missing weights, outputs that exist, bad settings) end with one line on stderr,
``tri-panet <command>: error: ...``, and exit status 2; set ``TRI_PANET_DEBUG=1`` to see
the traceback instead.

Multi-process training: ``torchrun --nproc_per_node N --no-python tri-panet train ...``
(or ``torchrun ... -m tri_panet.cli train ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

TASKS = ("denoise", "jpeg", "demosaic", "sr")
DTYPES = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------


def _torch_dtype(name: str):
    import torch

    return None if DTYPES[name] is None else getattr(torch, DTYPES[name])


def _device(name: str):
    from .training.engine import resolve_device

    return resolve_device(name)


def _load_model(args, *, task: str | None):
    """(model, registry name, weights description) from --model / --weights / the task's
    bundled tiny model; the model is in eval mode on --device."""
    from .models import load_pretrained, model_info
    from .training.config import default_model_for
    from .training.engine import build_model

    name = args.model
    if args.weights is not None:
        model = build_model(name, weights=args.weights, backend=args.backend, task=None)
        source = str(args.weights)
    else:
        if name is None:
            if task is None:
                raise CLIError("give --task, --model NAME or --weights FILE")
            name = default_model_for(task, getattr(args, "scale", None))
        try:
            model = load_pretrained(name, backend=args.backend)
        except FileNotFoundError as e:
            raise CLIError(f"{e}; pass --weights FILE") from None
        source = f"bundled {name}"
    name = getattr(model, "model_name", None) or name
    if name:
        have = model_info(name)["task"]
        if task is not None and have != task:
            raise CLIError(f"model {name!r} is made for task {have!r}, not {task!r}")
    model_scale = int(getattr(model, "scale", 1))
    if getattr(args, "scale", None) is not None and (task == "sr" or model_scale > 1) and args.scale != model_scale:
        raise CLIError(f"--scale {args.scale} does not match the model's scale {model_scale}")
    return model.to(_device(args.device)).eval(), name, source


def _task_of(args, model_name: str | None) -> str:
    from .models import model_info

    if args.task is not None:
        return args.task
    if model_name:
        return model_info(model_name)["task"]
    raise CLIError("cannot tell the task: give --task")


def _check_degradation_flags(args, task: str, *, allow: bool) -> dict:
    """make_degradation kwargs from --sigma/--quality/--scale (refusing flags of other tasks)."""
    wrong = {"denoise": ("quality", "scale"), "jpeg": ("sigma", "scale"), "demosaic": ("sigma", "quality", "scale"),
             "sr": ("sigma", "quality")}[task]
    bad = [f"--{n}" for n in wrong if getattr(args, n, None) is not None]
    if bad:
        raise CLIError(f"{', '.join(bad)} does not apply to task {task!r}")
    if not allow and (getattr(args, "sigma", None) is not None or getattr(args, "quality", None) is not None):
        raise CLIError("--sigma/--quality describe a degradation to apply: use them with --degrade")
    return {}


def _degradation(task: str, args, scale: int):
    from .data.degradations import make_degradation

    if task == "denoise":
        return make_degradation("denoise", sigma=25.0 if args.sigma is None else args.sigma, clip=args.clip_noise)
    if task == "jpeg":
        return make_degradation("jpeg", quality=20 if args.quality is None else args.quality)
    if task == "sr":
        return make_degradation("sr", scale=scale)
    return make_degradation("demosaic")


def _describe_degradation(task: str, deg, seed: int) -> str:
    if task == "denoise":
        clip = "clipped to [0, 1]" if deg.clip else "not clipped"
        return f"AWGN sigma {deg.sigma:g} (0-255 scale), {clip}, not quantised, seed {seed}"
    if task == "jpeg":
        return f"JPEG quality {deg.quality} (Pillow)"
    if task == "sr":
        return f"MATLAB bicubic x{deg.scale} downsampling, LR rounded to 8 bits"
    return "Bayer RGGB mosaic (zeros where unsampled)"


def _image_channels(path: Path) -> int:
    """1 for grey files, 3 for colour ones (alpha ignored); ValueError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    from .data.io import _GREY_MODES

    try:
        with Image.open(path) as im:
            mode = im.mode
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise CLIError(f"cannot read image {str(path)!r}: {e}") from None
    return 1 if mode in _GREY_MODES else 3


def _read_input(path: Path, n_colors: int, task: str):
    """The image at ``path`` as the model's input [C, H, W], refusing wrong channel counts."""
    from .data.degradations import bayer_mosaic
    from .data.io import load_image

    channels = _image_channels(path)
    if task == "demosaic" and channels == 1:
        # a raw one-channel CFA: spread it into the 3-channel RGGB mosaic the models take
        cfa = load_image(path, color=False)
        return bayer_mosaic(cfa.expand(3, -1, -1).contiguous())
    if channels != n_colors:
        kind = {1: "grey (1 channel)", 3: "colour (3 channels)"}
        hint = "convert it to grey first" if n_colors == 1 else "use a grey model or convert the image to RGB"
        raise CLIError(f"{path} is a {kind[channels]} image but the model takes {kind[n_colors]} images; {hint}")
    try:
        return load_image(path, color=n_colors == 3)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _write_json(path: Path, data: dict, force: bool) -> None:
    from ._files import write_text_atomic

    if path.exists() and not force:
        raise CLIError(f"{path} exists; pass --force to overwrite it")
    write_text_atomic(path, json.dumps(data, indent=1) + "\n", overwrite=force)


def _command_line(argv) -> str:
    return "tri-panet " + shlex.join(argv)


# ---------------------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------------------


def _restore_plan(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    from .data.io import IMAGE_EXTENSIONS, list_images

    if not inp.exists():
        raise CLIError(f"input {str(inp)!r} does not exist")
    if inp.is_dir():
        if out.exists() and not out.is_dir():
            raise CLIError(f"input is a folder, so -o must be a folder; {out} is a file")
        if out.resolve() == inp.resolve():
            raise CLIError("the output folder is the input folder; choose another -o (inputs are never overwritten)")
        try:
            images = list_images(inp)
        except ValueError as e:
            raise CLIError(str(e)) from None
        return [(p, out / (p.stem + ".png")) for p in images]
    if out.is_dir():
        raise CLIError(f"-o {out} is a folder; give an output file name (e.g. {out / (inp.stem + '.png')})")
    if out.suffix.lower() not in IMAGE_EXTENSIONS:
        raise CLIError(f"-o {out}: unknown image extension {out.suffix!r} (use .png for a lossless result)")
    return [(inp, out)]


#: Queries above which whole-image attention on a CPU gets a notice (256 x 256 pixels).
CPU_WHOLE_IMAGE_NOTICE = 256 * 256


def _whole_image_cpu_notice(device, x, tile) -> str | None:
    """A one-line hint when image ``x`` will run whole-image attention on ``device``, a CPU, at a size
    where that takes minutes (every query attends to every key of 5 levels: the work grows as (H W)^2)."""
    queries = x.shape[-2] * x.shape[-1]
    if tile or device.type != "cpu" or queries <= CPU_WHOLE_IMAGE_NOTICE:
        return None
    return (
        f"note: whole-image attention at {x.shape[-2]}x{x.shape[-1]} on the CPU: each of {queries:,} queries attends "
        f"to every key of the pyramid, which can take many minutes; --tile 128 restores in tiles (less context), "
        f"a GPU runs it whole"
    )


def cmd_restore(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from .data.io import save_image
    from .inference import restore
    from .metrics import psnr
    from .training.engine import baseline, metric_convention

    inp, out = Path(args.input), Path(args.output)
    plan = _restore_plan(inp, out)
    for src, dst in plan:
        if dst.resolve() == src.resolve():
            raise CLIError(f"refusing to overwrite the input {src}")
    existing = [str(d) for _, d in plan if d.exists()]
    if existing and not args.force:
        more = f" (and {len(existing) - 3} more)" if len(existing) > 3 else ""
        raise CLIError(f"output exists: {', '.join(existing[:3])}{more}; pass --force to overwrite")
    if args.task is not None:
        _check_degradation_flags(args, args.task, allow=args.degrade)
    model, name, source = _load_model(args, task=args.task)
    task = _task_of(args, name)
    _check_degradation_flags(args, task, allow=args.degrade)
    scale = int(getattr(model, "scale", 1))
    n_colors = int(getattr(model, "n_colors", 3))
    deg = _degradation(task, args, scale) if args.degrade else None
    if inp.is_dir():
        out.mkdir(parents=True, exist_ok=True)
    elif not out.parent.exists():
        raise CLIError(f"output folder {str(out.parent)!r} does not exist")
    dtype = _torch_dtype(args.dtype)
    for src, _ in plan:  # unreadable files and wrong channel counts fail before any work
        channels = _image_channels(src)
        if channels != n_colors and not (task == "demosaic" and channels == 1):
            _read_input(src, n_colors, task)
    print(f"restoring {len(plan)} image(s) with {name or source} ({source}), task {task}")
    bar = tqdm(plan, unit="img", disable=len(plan) < 2, file=sys.stderr)
    device, noticed = _device(args.device), False  # the whole-image CPU hint, once per run
    for i, (src, dst) in enumerate(bar):
        x = _read_input(src, n_colors if task != "demosaic" else 3, task)
        clean = None
        if deg is not None:
            from .data.dataset import sample_generator
            from .data.degradations import modcrop

            clean = modcrop(x, scale) if task == "sr" else x
            x = deg(clean, sample_generator(args.seed, 0, i))
        notice = _whole_image_cpu_notice(device, x, args.tile)
        if notice and not noticed:
            print(notice, file=sys.stderr)
            noticed = True
        y = restore(model, x, tile=args.tile, tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble, dtype=dtype)
        save_image(y.float().cpu(), dst, overwrite=args.force)
        if clean is not None:
            conv = metric_convention(task, scale)
            p_in = float(psnr(baseline(task, x, scale)[None], clean[None], **conv)[0])
            p_out = float(psnr(y[None].float().cpu(), clean[None], **conv)[0])
            print(f"{src.name}: PSNR degraded {p_in:.2f} dB -> restored {p_out:.2f} dB -> {dst}")
        else:
            print(f"{src} -> {dst}")
    return 0


# ---------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------


def cmd_eval(args) -> int:
    from .data.io import list_images
    from .training.engine import evaluate, prepare_eval_pairs

    json_path = Path(args.json) if args.json else None
    if json_path is not None and json_path.exists() and not args.force:
        raise CLIError(f"{json_path} exists; pass --force to overwrite it")
    _check_degradation_flags(args, args.task, allow=True)
    model, name, source = _load_model(args, task=args.task)
    task = args.task
    scale = int(getattr(model, "scale", 1))
    n_colors = int(getattr(model, "n_colors", 3))
    try:
        paths = list_images(args.data)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.limit:
        paths = paths[: args.limit]
    deg = _degradation(task, args, scale)
    pairs = prepare_eval_pairs(paths, task, deg, color=n_colors == 3, seed=args.seed, crop=args.crop, scale=scale)
    base = {"denoise": "noisy", "jpeg": "jpeg", "demosaic": "bilinear", "sr": "bicubic"}[task]
    conv_txt = {"denoise": "RGB, no border crop", "demosaic": "RGB, no border crop", "jpeg": "Y channel (BT.601), no crop",
                "sr": f"Y channel (BT.601), border crop {scale}"}[task]
    if task == "jpeg" and n_colors == 1:
        conv_txt = "grey (Pillow luma) images, no crop"
    print(f"model {name or '?'} ({source}); data {args.data} ({len(pairs)} images"
          f"{f', centre crop {args.crop}' if args.crop else ''}); {_describe_degradation(task, deg, args.seed)}")
    print(f"metric: PSNR (dB) / SSIM, {conv_txt}; tile {args.tile or 'none'}{', x8 self-ensemble' if args.self_ensemble else ''}")
    largest = max(pairs, key=lambda p: p.degraded.shape[-2] * p.degraded.shape[-1], default=None)
    notice = largest and _whole_image_cpu_notice(_device(args.device), largest.degraded, args.tile)
    if notice:
        print(notice, file=sys.stderr)
    width = max([len(p.name) for p in pairs] + [5])
    head = f"{'image':<{width}}  {base + ' PSNR':>13} {'SSIM':>7}  {'model PSNR':>10} {'SSIM':>7}  {'time s':>7}"
    print(head)

    def show(row):
        print(f"{row['image']:<{width}}  {row['input_psnr']:>13.3f} {row['input_ssim']:>7.4f}  "
              f"{row['model_psnr']:>10.3f} {row['model_ssim']:>7.4f}  {row['seconds']:>7.2f}", flush=True)

    res = evaluate(model, pairs, task, scale=scale, tile=args.tile, tile_overlap=args.tile_overlap,
                   self_ensemble=args.self_ensemble, dtype=_torch_dtype(args.dtype), progress=False, on_image=show)
    m = res["mean"]
    print("-" * len(head))
    print(f"{'mean':<{width}}  {m['input_psnr']:>13.3f} {m['input_ssim']:>7.4f}  {m['model_psnr']:>10.3f} "
          f"{m['model_ssim']:>7.4f}  {m['seconds']:>7.2f}")
    if json_path is not None:
        data = {
            "task": task,
            "model": name,
            "weights": source,
            "data": str(args.data),
            "images": len(pairs),
            "degradation": repr(deg),
            "degradation_text": _describe_degradation(task, deg, args.seed),
            "seed": args.seed,
            "crop": args.crop,
            "tile": args.tile,
            "tile_overlap": args.tile_overlap,
            "self_ensemble": args.self_ensemble,
            "baseline": base,
            "convention": res["convention"],
            "rows": res["rows"],
            "mean": res["mean"],
            "command": args.command_line,
        }
        _write_json(json_path, data, args.force)
        print(f"wrote {json_path}")
    return 0


# ---------------------------------------------------------------------------------------
# train / finetune
# ---------------------------------------------------------------------------------------

#: flags whose destination is a TrainConfig field of the same name
_TRAIN_FIELDS = (
    "task", "model", "weights", "backend", "data", "val", "val_limit", "val_crop", "val_tile", "val_sigma", "val_quality",
    "patch_size", "sigma", "sigma_range", "quality", "quality_range", "scale", "clip_noise", "num_workers", "steps",
    "batch_size", "lr", "lr_min", "schedule", "warmup_steps", "lr_step", "lr_gamma", "weight_decay", "grad_clip", "amp",
    "device", "threads", "seed", "out", "ckpt_every", "keep_checkpoints", "val_every", "log_every", "resume", "progress",
)


def _parse_model_args(items) -> dict:
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


def _train_config(args, finetune: bool):
    from .training.config import TrainConfig, load_toml

    given = {k: getattr(args, k) for k in _TRAIN_FIELDS if hasattr(args, k)}
    if hasattr(args, "model_arg"):
        given["model_args"] = _parse_model_args(args.model_arg)
    values = load_toml(args.config) if args.config else {}
    if finetune:
        values.setdefault("lr", 5e-5)
        # finetune starts from weights: a file, or the bundled weights of the model
        if "weights" not in given and not values.get("weights"):
            values["pretrained"] = True
    values.update(given)
    try:
        return TrainConfig.from_dict(values, source=args.config or "flags")
    except TypeError as e:
        raise CLIError(str(e)) from None


def cmd_train(args, finetune: bool = False) -> int:
    from .training.distributed import cleanup, init_distributed
    from .training.engine import Trainer

    cfg = _train_config(args, finetune)
    info = init_distributed()
    try:
        result = Trainer(cfg, command=args.command_line).fit()
    finally:
        cleanup()
    if info.is_main:
        val = result.get("val")
        tail = f", validation PSNR {val['val_psnr']:.3f} dB" if val else ""
        print(f"trained {result['step']} steps in {result['wall_time_s']:.1f} s{tail}; weights: {result['weights']}")
    return 0


# ---------------------------------------------------------------------------------------
# bench, demo, models
# ---------------------------------------------------------------------------------------


def cmd_bench(argv) -> int:
    try:
        from . import benchmarking
    except ImportError as e:
        raise CLIError(f"the benchmark module is not available ({e})") from None
    fn = getattr(benchmarking, "main", None)
    if fn is None:
        raise CLIError("tri_panet.benchmarking has no main(argv); run bench/report.py instead")
    return int(fn(list(argv)) or 0)


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(
        args.output_dir,
        sigma=args.sigma,
        size=args.size,
        image=args.image,
        seed=args.seed,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        force=args.force,
        weights=args.weights,
        device=str(_device(args.device)),
    )
    return 0


def cmd_models(args) -> int:
    from .models import available_models, bundled_weights, model_info

    bundled = set(bundled_weights())
    for name in available_models():
        info = model_info(name)
        mark = "bundled" if name in bundled else "-"
        print(f"{name:<16} {info['task']:<9} {mark:<8} {info['description']}")
    return 0


# ---------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------


def _add_model_flags(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", help="registry name (tri-panet models); alone: its bundled weights")
    g.add_argument("--weights", metavar="FILE", help=".safetensors (from tri-panet train) or an official .pth (with --model)")
    g.add_argument("--backend", default="auto", help="attention backend (default: auto)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="fp16/bf16 autocast (GPU) (default: fp32)")
    g.add_argument("--tile", type=int, metavar="N", help="restore in N x N tiles (default: whole image)")
    g.add_argument("--tile-overlap", type=int, default=16, metavar="N", help="overlap of tiles in px (default: 16)")
    g.add_argument("--self-ensemble", action="store_true", help="average over the 8 flips/transposes (x8 time)")


def _add_degradation_flags(p, *, restore: bool) -> None:
    g = p.add_argument_group("degradation")
    extra = " (with --degrade)" if restore else " (default: 25)"
    g.add_argument("--sigma", type=float, help="AWGN sigma on the 0-255 scale" + extra)
    extra = " (with --degrade)" if restore else " (default: 20)"
    g.add_argument("--quality", type=int, help="JPEG quality 1..100" + extra)
    g.add_argument("--scale", type=int, choices=(2, 3, 4), help="SR factor (default: the model's; picks tiny-sr-xK)")
    g.add_argument("--seed", type=int, default=0, help="seed of the synthetic degradation (default: 0)")
    g.add_argument("--clip-noise", action="store_true", help="clamp noisy images to [0, 1] (the benchmarks do not)")


def _add_train_flags(p, finetune: bool) -> None:
    S = argparse.SUPPRESS  # only flags actually given override the config file
    p.add_argument("--config", metavar="TOML", help="settings file (flags override it); see docs/TRAINING.md")
    g = p.add_argument_group("what")
    g.add_argument("--task", choices=TASKS, default=S, help="restoration task (default: denoise)")
    g.add_argument("--model", metavar="NAME", default=S, help="registry name (default: tiny-<task>)")
    if finetune:
        g.add_argument("--weights", metavar="FILE", default=S,
                       help="start from this .safetensors / official .pth (default: the bundled weights of --model)")
    else:
        g.add_argument("--weights", metavar="FILE", default=S, help="initialise from this .safetensors / official .pth")
        g.add_argument("--model-arg", metavar="NAME=VALUE", action="append", default=S,
                       help="constructor override of a fresh model, e.g. n_feats=16 (repeatable; VALUE is JSON)")
    g.add_argument("--backend", default=S, help="attention backend (default: auto)")
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", metavar="DIR", default=S, help="folders of clean training images")
    g.add_argument("--val", metavar="DIR", default=S, help="folder of clean validation images")
    g.add_argument("--val-limit", type=int, default=S, metavar="N", help="validate on the first N images (0: all; default 4)")
    g.add_argument("--val-crop", type=int, default=S, metavar="N", help="centre-crop validation images to N (default 128)")
    g.add_argument("--val-tile", type=int, default=S, metavar="N", help="tiled validation")
    g.add_argument("--val-sigma", type=float, default=S, help="validation noise level (default: --sigma or 25)")
    g.add_argument("--val-quality", type=int, default=S, help="validation JPEG quality (default: --quality or 20)")
    g.add_argument("--patch-size", type=int, default=S, metavar="N", help="input patch side in px (default 48)")
    g.add_argument("--sigma", type=float, default=S, help="fixed AWGN sigma (0-255)")
    g.add_argument("--sigma-range", type=float, nargs=2, metavar=("LO", "HI"), default=S,
                   help="blind AWGN sigma range (default for denoise: 0 55)")
    g.add_argument("--quality", type=int, default=S, help="fixed JPEG quality")
    g.add_argument("--quality-range", type=int, nargs=2, metavar=("LO", "HI"), default=S,
                   help="blind JPEG quality range (default for jpeg: 10 40)")
    g.add_argument("--scale", type=int, choices=(2, 3, 4), default=S, help="SR factor (default: the model's)")
    g.add_argument("--clip-noise", action="store_true", default=S, help="clamp noisy inputs to [0, 1]")
    g.add_argument("--num-workers", type=int, default=S, help="DataLoader workers (default 0)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=S, help="optimiser steps (default 1000)")
    g.add_argument("--batch-size", type=int, default=S, help="patches per step and process (default 8)")
    g.add_argument("--lr", type=float, default=S, help=f"Adam learning rate (default {'5e-5' if finetune else '2e-4'})")
    g.add_argument("--lr-min", type=float, default=S, help="cosine floor (default 1e-6)")
    g.add_argument("--schedule", choices=("cosine", "step", "constant"), default=S, help="LR schedule (default cosine)")
    g.add_argument("--warmup-steps", type=int, default=S, help="linear warmup steps (default 0)")
    g.add_argument("--lr-step", type=int, default=S, help="step schedule: decay every N steps (default steps/2)")
    g.add_argument("--lr-gamma", type=float, default=S, help="step schedule: decay factor (default 0.5)")
    g.add_argument("--weight-decay", type=float, default=S, help="Adam weight decay (default 0)")
    g.add_argument("--grad-clip", type=float, default=S, help="clip the global grad norm (default 0: off)")
    g.add_argument("--amp", choices=("none", "bf16", "fp16"), default=S, help="mixed precision (GPU; default none)")
    g.add_argument("--device", default=S, help="auto, cpu, cuda (default auto)")
    g.add_argument("--threads", type=int, default=S, help="torch CPU threads (default: torch's)")
    g.add_argument("--seed", type=int, default=S, help="seed of the initialisation and the data (default 0)")
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", default=S, help="run folder (default runs/<model>)")
    g.add_argument("--resume", action="store_true", default=S, help="continue the run in --out from its last checkpoint")
    g.add_argument("--ckpt-every", type=int, default=S, help="checkpoint every N steps (default 500)")
    g.add_argument("--keep-checkpoints", type=int, default=S, help="checkpoints kept (default 2)")
    g.add_argument("--val-every", type=int, default=S, help="validate every N steps (0: at the end; default 500)")
    g.add_argument("--log-every", type=int, default=S, help="log every N steps (default 10)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S, help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The ``tri-panet`` argument parser."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="tri-panet",
        description="Pyramid-attention image restoration: restore images, evaluate, train, benchmark, demo.",
        epilog="Start with: tri-panet demo",
    )
    parser.add_argument("--version", action="version", version=f"tri-panet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("restore", help="restore an image or a folder of images",
                       description="Restore an image (or every image of a folder) with a restoration model. "
                                   "Inputs are never overwritten; existing outputs only with --force.")
    p.add_argument("input", help="image file or folder")
    p.add_argument("-o", "--output", required=True, help="output image (for a file) or folder (for a folder; PNGs)")
    p.add_argument("--task", choices=TASKS, help="restoration task (default: the model's)")
    p.add_argument("--degrade", action="store_true",
                   help="treat INPUT as clean: apply the task's degradation first and print PSNR before/after")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_degradation_flags(p, restore=True)
    _add_model_flags(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("eval", help="degrade clean images, restore them, print PSNR/SSIM",
                       description="Degrade each clean image of DIR (fixed seed), restore it, and print per-image and "
                                   "mean PSNR/SSIM of the degraded input (or the classical baseline: bilinear for "
                                   "demosaic, bicubic for sr) and of the model, with the task's metric convention.")
    p.add_argument("--task", choices=TASKS, required=True, help="restoration task")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of clean images")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images (quick runs)")
    p.add_argument("--crop", type=int, metavar="N", help="centre-crop each image to N x N first (quick runs)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    _add_degradation_flags(p, restore=False)
    _add_model_flags(p)
    p.set_defaults(func=cmd_eval)

    for name, ft in (("train", False), ("finetune", True)):
        desc = ("Train a model from scratch (flags or --config TOML; flags win)." if not ft else
                "Fine-tune a model from its bundled weights (--model) or a weights file (--weights).")
        p = sub.add_parser(name, help=desc.split(" (")[0].rstrip("."), description=desc +
                           " Checkpoints go to OUT/checkpoints, final weights to OUT/model.safetensors. "
                           "Multi-process: torchrun --nproc_per_node N --no-python tri-panet " + name + " ...")
        _add_train_flags(p, ft)
        p.set_defaults(func=(lambda a, ft=ft: cmd_train(a, finetune=ft)))

    sub.add_parser("bench", help="benchmark the attention implementations (tri-panet bench --help)", add_help=False)

    p = sub.add_parser("demo", help="denoise a bundled photo with the bundled tiny model (no data needed)",
                       description="Add noise to a photo that ships with scikit-image, restore it with the bundled "
                                   "tiny-denoise model, write a before/after PNG and print the PSNRs and time.")
    p.add_argument("-o", "--output-dir", default=".", metavar="DIR", help="folder for tri_panet_demo.png (default: .)")
    p.add_argument("--sigma", type=float, default=25.0, help="AWGN sigma, 0-255 scale (default 25)")
    p.add_argument("--size", type=int, default=256, metavar="N", help="resize the photo to N x N (default 256)")
    p.add_argument("--image", default="astronaut", help="skimage.data photo: astronaut, coffee, chelsea, ...")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--tile", type=int, default=64, metavar="N", help="restore in N x N tiles (default 64; 0: whole image)")
    p.add_argument("--tile-overlap", type=int, default=16, metavar="N", help="tile overlap in px (default 16)")
    p.add_argument("--weights", metavar="FILE", help="use this .safetensors instead of the bundled weights")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    p.add_argument("--force", action="store_true", help="overwrite an existing picture")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the registered models and the bundled weights",
                       description="List the registry: name, task, whether weights are bundled, description.")
    p.set_defaults(func=cmd_models)
    return parser


_USER_ERRORS = (CLIError, ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                PermissionError)


def main(argv=None) -> int:
    """Entry point of the ``tri-panet`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("TRI_PANET_DEBUG", "") not in ("", "0")
    command = argv[0] if argv else ""
    try:
        if command == "bench":
            # everything after "bench" (--help included) belongs to the benchmark's own parser
            return cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        args.command_line = _command_line(argv)
        return int(args.func(args) or 0)
    except _USER_ERRORS as e:
        if debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"tri-panet {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tri-panet {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
