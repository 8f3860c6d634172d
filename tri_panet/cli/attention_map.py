"""``tri-panet attention-map``: draw where query pixels attend across the attention pyramid."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .._files import atomic_write
from ..attention_figure import render_attention_map
from ..attention_map import attention_input, attention_weights, feature_position
from ..device import resolve_device
from ..tasks import SCALES, TASKS
from .common import CLIError, load_model, read_input, task_help, task_of

#: The task whose bundled model is drawn when neither --task, --model nor --weights is given.
DEFAULT_TASK = "denoise"


def add_parser(sub) -> None:
    """Register ``attention-map`` on the subcommand parsers ``sub``."""
    p = sub.add_parser(
        "attention-map",
        help="draw where a pixel attends across the pyramid (PNG)",
        description="Run the model on IMAGE up to its pyramid attention block and draw, for each --at "
        "pixel, its attention weights over every pyramid level: one panel per level (the image at the "
        "level's size under a heat map, the query's patch in cyan, its strongest keys over all levels "
        "numbered in green, the level's share of the weight in the title), one row per query.",
    )
    p.add_argument("image", help="input image (what the model restores)")
    p.add_argument(
        "--at",
        nargs=2,
        type=int,
        action="append",
        required=True,
        metavar=("Y", "X"),
        help="query pixel, row Y and column X of IMAGE (repeat for more rows)",
    )
    p.add_argument("-o", "--output", required=True, help="output PNG")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument(
        "--task",
        choices=TASKS,
        help=f"restoration task: {task_help()} (default: the model's; {DEFAULT_TASK} without a model)",
    )
    p.add_argument(
        "--model",
        metavar="NAME",
        help="registry name (tri-panet models); alone: its bundled weights (default: the task's)",
    )
    p.add_argument(
        "--weights", metavar="FILE", help=".safetensors (from tri-panet train) or an official .pth (with --model)"
    )
    p.add_argument("--scale", type=int, choices=SCALES, help="SR factor (picks fast-sr-xK with --task sr)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="strongest keys to mark per query (default: 5)")
    p.add_argument(
        "--panel",
        type=int,
        default=256,
        metavar="PX",
        help="display size of the first level's longer side (default: 256)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=run, backend="auto")  # the block is not run: only its embeddings are


def run(args: argparse.Namespace) -> int:
    """Compute the weights of the --at queries and write the picture."""
    src, dst = Path(args.image), Path(args.output)
    if dst.suffix.lower() != ".png":
        raise CLIError(f"-o {dst}: the attention map is a PNG; give a .png name")
    if dst.exists() and not args.force:
        raise CLIError(f"{dst} exists; pass --force to overwrite it")
    if dst.resolve() == src.resolve():
        raise CLIError(f"refusing to overwrite the input {src}")
    for name, value, low in (("--top-k", args.top_k, 0), ("--panel", args.panel, 16)):
        if value < low:
            raise CLIError(f"{name} must be at least {low}, got {value}")
    device = resolve_device(args.device)
    no_model = args.model is None and args.weights is None
    model, info, _ = load_model(args, device, task=args.task or (DEFAULT_TASK if no_model else None))
    image = read_input(src, info.n_colors, task_of(args, info))
    height, width = image.shape[-2:]
    for y, x in args.at:
        if not (0 <= y < height and 0 <= x < width):
            raise CLIError(f"--at {y} {x} is outside the image ({height} rows x {width} columns)")
    with torch.no_grad():
        block, features, seen = attention_input(model, image)
        cells = [feature_position((y, x), seen, features.shape[-2:]) for y, x in args.at]
        weights = attention_weights(block, features, cells)
    labels = [
        f"pixel (y {y}, x {x}) -> feature cell (y {cy}, x {cx}) of {features.shape[-2]}x{features.shape[-1]}"
        for (y, x), (cy, cx) in zip(args.at, cells)
    ]
    picture = render_attention_map(
        image,
        weights,
        block.scales,
        cells,
        labels=labels,
        top_k=args.top_k,
        panel=args.panel,
        patch_size=block.patch_size,
    )
    atomic_write(dst, lambda f: picture.save(f, format="PNG", optimize=True), overwrite=args.force)
    name = info.name or args.model or args.weights
    print(
        f"{name}: {len(cells)} quer{'y' if len(cells) == 1 else 'ies'} over {len(weights)} levels -> {dst} "
        f"({picture.width}x{picture.height})"
    )
    return 0
