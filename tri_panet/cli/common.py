"""What the ``tri-panet`` commands share: the user-error type, the model and degradation
flags and their value types, model loading, the tile plan, reading input images, output
checks and small output helpers, and the process settings a command changes."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .._files import check_writable, write_text_atomic
from .._text import listing
from ..cost import plan_restore, tile_text
from ..data.degradations import Degradation
from ..data.io import MAX_PIXELS, ImageHeader, allow_large_images, load_image, loss_notes, read_header
from ..device import threads
from ..models import ModelInfo, build_model, describe
from ..tasks import LEVELS, SCALES, TASKS, Task, get_task

#: --dtype choices: None runs in float32, the others under autocast.
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}

#: Restorations estimated to take at least this many seconds print their estimate first.
ESTIMATE_NOTICE_SECONDS = 10.0

#: The flags of degradation options, each applying to some tasks only (Task.options).
DEGRADATION_OPTIONS = tuple(level.name for level in LEVELS) + ("scale",)

#: --backend's help, for restore / eval and train alike.
BACKEND_HELP = "attention backend (default: auto; on a CPU, cpu_fused is about 2x faster for the tiny-* models)"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def task_help() -> str:
    """The tasks with their labels, for ``--task`` help texts."""
    return ", ".join(f"{t.name} ({t.label})" for t in TASKS.values())


# ---------------------------------------------------------------------------------------
# flag values (argparse types: a bad value is an argparse error, exit status 2)
# ---------------------------------------------------------------------------------------


def _int_at_least(minimum: int):
    """An argparse type: an int >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"  # what argparse names in its messages
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def tile_value(text: str) -> int | str | None:
    """An argparse type for --tile: ``auto``, ``0`` (None: the whole image) or a side >= 1."""
    if text == "auto":
        return "auto"
    return non_negative_int(text) or None


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    """--threads of the inference commands (train has its own, a setting)."""
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch CPU threads (default: the cores other processes leave free)",
    )


def add_large_images_flag(p: argparse.ArgumentParser) -> None:
    """--allow-large-images, for the commands that read image files."""
    p.add_argument(
        "--allow-large-images",
        action="store_true",
        help=f"read images above the {MAX_PIXELS / 1e6:.1f} Mpx guard against decompression bombs",
    )


@contextlib.contextmanager
def process_settings(args: argparse.Namespace) -> Iterator[None]:
    """What a command changes for the whole process, put back afterwards (``main`` may run
    again in the same process): torch's CPU threads (--threads, else the free cores) and
    the image size guard (--allow-large-images)."""
    requested = getattr(args, "threads", None) or None  # train's setting: 0 for the default
    with threads(requested), allow_large_images(getattr(args, "allow_large_images", False)):
        yield


# ---------------------------------------------------------------------------------------
# flags
# ---------------------------------------------------------------------------------------


def add_tiling_flags(p, *, default_tile: str | int = "auto") -> None:
    """--tile (default ``default_tile``) and --tile-overlap, on a parser or an argument group."""
    p.add_argument(
        "--tile",
        type=tile_value,
        default=default_tile,
        metavar="N",
        help="restore in N x N tiles; auto: the whole image or the largest tile that is quick on the "
        f"device; 0: the whole image, on purpose (default: {default_tile})",
    )
    p.add_argument(
        "--tile-overlap", type=non_negative_int, default=16, metavar="N", help="overlap of tiles in px (default: 16)"
    )


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """--model, --weights, --backend, --device, --dtype and the tiling flags of restore / eval."""
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", help="registry name (tri-panet models); alone: its bundled weights")
    g.add_argument(
        "--weights", metavar="FILE", help=".safetensors (from tri-panet train) or an official .pth (with --model)"
    )
    g.add_argument("--backend", default="auto", help=BACKEND_HELP)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="fp16/bf16 autocast (GPU) (default: fp32)")
    add_tiling_flags(g)
    g.add_argument("--self-ensemble", action="store_true", help="average over the 8 flips/transposes (x8 time)")
    add_threads_flag(p)
    add_large_images_flag(p)


def add_degradation_flags(p: argparse.ArgumentParser, *, restore: bool) -> None:
    """The synthetic degradation of restore --degrade / eval: one flag per task level, --scale, --seed."""
    g = p.add_argument_group("degradation")
    for level in LEVELS:
        default = " (with --degrade)" if restore else f" (default: {level.fixed:g})"
        g.add_argument(f"--{level.name}", type=level.type, help=level.help + default)
    g.add_argument("--scale", type=int, choices=SCALES, help="SR factor (default: the model's; picks fast-sr-xK)")
    g.add_argument("--seed", type=int, default=0, help="seed of the synthetic degradation (default: 0)")
    g.add_argument("--clip-noise", action="store_true", help="clamp noisy images to [0, 1] (the benchmarks do not)")


def check_degradation_flags(args: argparse.Namespace, task: Task, *, degrade: bool) -> None:
    """Refuse degradation flags of other tasks, and levels without a degradation to apply."""
    bad = [f"--{n}" for n in DEGRADATION_OPTIONS if n not in task.options and getattr(args, n, None) is not None]
    if bad:
        raise CLIError(f"{', '.join(bad)} does not apply to task {task.name!r}")
    if not degrade and any(getattr(args, level.name, None) is not None for level in LEVELS):
        flags = "/".join(f"--{level.name}" for level in LEVELS)
        raise CLIError(f"{flags} describe a degradation to apply: use them with --degrade")


def fixed_degradation(task: Task, args: argparse.Namespace, scale: int) -> Degradation:
    """The task's degradation at the level the flags give (else the task's default)."""
    level = getattr(args, task.level.name) if task.level else None
    return task.make_degradation(**task.fixed_params(level, scale=scale, clip=args.clip_noise))


def torch_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of a --dtype choice (None: float32, no autocast)."""
    return DTYPES[name]


# ---------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------


def load_model(
    args: argparse.Namespace, device: torch.device, *, task: str | None
) -> tuple[torch.nn.Module, ModelInfo, str]:
    """(model in eval mode on ``device``, its descriptor, where its weights come from) from
    --model / --weights / the task's bundled tiny model; ``task`` (if given) must be the model's."""
    if args.weights is not None:
        model = build_model(args.model, weights=args.weights, backend=args.backend, task=task)
        source = str(args.weights)
    else:
        if args.model is None and task is None:
            raise CLIError("give --task, --model NAME or --weights FILE")
        name = args.model or get_task(task).default_model(args.scale)
        try:
            model = build_model(name, pretrained=True, backend=args.backend, task=task)
        except FileNotFoundError as e:
            raise CLIError(f"{e}; pass --weights FILE") from None
        source = f"bundled {name}"
    info = describe(model)
    scaled = info.scale > 1 or (task is not None and get_task(task).scaled)
    if args.scale is not None and scaled and args.scale != info.scale:
        raise CLIError(f"--scale {args.scale} does not match the model's scale {info.scale}")
    return model.to(device).eval(), info, source


def task_of(args: argparse.Namespace, info: ModelInfo) -> Task:
    """The task of --task, else the model's."""
    name = args.task or info.task
    if name is None:
        raise CLIError("cannot tell the task: give --task")
    return get_task(name)


# ---------------------------------------------------------------------------------------
# inputs and outputs
# ---------------------------------------------------------------------------------------


def inspect_images(
    paths: Sequence[Path],
    n_colors: int | None,
    raw_task: Task | None = None,
    *,
    writes_8bit: bool = False,
    keeps_colour: bool = False,
) -> list[ImageHeader]:
    """The headers of the image files ``paths`` (read only: a missing or unreadable file,
    or one above the size guard, fails here, before any work), and on stderr one warning
    line per kind of loss in reading them for a model of ``n_colors`` channels: grey
    replicated to RGB or colour turned grey, alpha, frames, 16 bits (``writes_8bit``: the
    result is written with 8 bits). The same rule for every command. ``raw_task``: the
    files are model inputs, and one-channel files of a task with a raw grey input (a
    Bayer CFA) are taken as such, not converted. ``keeps_colour``: colour files of a grey
    model are not turned grey (:func:`load_input` with ``keep_colour``)."""
    headers = [read_header(p) for p in paths]
    raw = raw_task is not None and raw_task.from_grey is not None
    converted = [h for h in headers if not (raw and h.channels == 1)]
    for line in loss_notes(converted, n_colors != 1, writes_8bit=writes_8bit, keeps_colour=keeps_colour):
        print(line, file=sys.stderr)
    return headers


def load_input(
    path: Path, n_colors: int | None, task: Task, channels: int, *, keep_colour: bool = False
) -> torch.Tensor:
    """The image at ``path``, whose file has ``channels`` channels, as the model's input
    [C, H, W]: a one-channel file of a task with a raw grey input (a Bayer CFA) through
    ``task.from_grey``, any other converted to the model's channels, except that with
    ``keep_colour`` a colour file stays RGB (for :func:`tri_panet.inference.restore_luma`)."""
    if channels == 1 and task.from_grey is not None and n_colors != 1:
        return task.from_grey(load_image(path, color=False))
    return load_image(path, color=n_colors != 1 or (keep_colour and channels == 3))


def read_input(path: Path, n_colors: int | None, task: Task) -> torch.Tensor:
    """The image at ``path`` as the model's input [C, H, W], with :func:`inspect_images`'s
    warnings: for the commands that read one image."""
    (header,) = inspect_images([path], n_colors, task)
    return load_input(path, n_colors, task, header.channels)


def plan_tile(
    args: argparse.Namespace, model: torch.nn.Module, device: torch.device, sizes: Sequence[tuple[int, int]]
) -> int | None:
    """The tile side ``restore`` gets for the images of ``sizes`` ((H, W) each; None: whole
    images): --tile auto picks it, a given tile or --tile 0 is checked to fit in memory
    (CLIError with the estimate and the tile to use otherwise); the estimate is printed
    when it is long."""
    try:
        estimate = plan_restore(model, device, sizes, args.tile, args.tile_overlap, self_ensemble=args.self_ensemble)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if estimate.seconds >= ESTIMATE_NOTICE_SECONDS:
        how = f"{tile_text(estimate.tile)}{', --tile auto' if args.tile == 'auto' else ''}"
        cpu = f", {torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else ""
        print(
            f"note: estimated {estimate.describe()} ({how}, on {device}{cpu}); a busy machine is slower",
            file=sys.stderr,
        )
    return estimate.tile if args.tile == "auto" else args.tile


def check_output_file(path: Path, force: bool) -> None:
    """Refuse (CLIError) an output file whose folder is missing, that exists (unless
    ``force``), or that cannot be written: before the work, not after it."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"output folder {str(parent)!r} does not exist")
    if path.is_dir():
        raise CLIError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise CLIError(f"{path} exists; pass --force to overwrite it")
    check_writable(path)


def _finite(value, path: str, replaced: list[str]):
    """``value`` with every infinite or NaN float replaced by None (JSON has neither),
    noting where in ``replaced``."""
    if isinstance(value, float) and not math.isfinite(value):
        replaced.append(f"{path} ({value})")
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), replaced) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", replaced) for i, v in enumerate(value)]
    return value


def write_json(path: Path, data: dict, force: bool) -> None:
    """Write ``data`` to ``path`` as JSON, atomically; an existing file only with ``force``.
    Infinite values (the PSNR of identical images) and NaN become null, listed in a
    ``"notes"`` entry, so that the file is standard JSON."""
    check_output_file(path, force)
    replaced: list[str] = []
    data = _finite(data, "", replaced)
    if replaced:
        data["notes"] = [
            *data.get("notes", []),
            "null stands for a value that is not finite (an infinite PSNR: "
            f"the images are identical): {listing(replaced, limit=10)}",
        ]
    write_text_atomic(path, json.dumps(data, indent=1, allow_nan=False) + "\n", overwrite=force)


def command_line(argv: list[str]) -> str:
    """The command as typed (``tri-panet restore ...``), for logs and metadata."""
    return "tri-panet " + shlex.join(argv)
