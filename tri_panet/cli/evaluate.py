"""``tri-panet eval``: degrade clean images with fixed seeds, restore them, print PSNR/SSIM."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..baselines import BASELINES, EXTRA, Baseline, BaselineUnavailable, get_baseline
from ..data.io import list_images
from ..device import resolve_device
from ..evaluation import evaluate, prepare_eval_pairs
from ..tasks import TASKS, Task, get_task
from .common import (
    CLIError,
    add_degradation_flags,
    add_model_flags,
    check_degradation_flags,
    check_output_file,
    fixed_degradation,
    inspect_images,
    load_model,
    plan_tile,
    positive_int,
    task_help,
    torch_dtype,
    write_json,
)


def add_parser(sub) -> None:
    """Register ``eval`` on the subcommand parsers ``sub``."""
    inputs = ", ".join(f"{t.name}: {t.input_name}" for t in TASKS.values())
    defaults = "; ".join(f"{t.name}: {' '.join(t.baselines)}" for t in TASKS.values())
    p = sub.add_parser(
        "eval",
        help="degrade clean images, restore them, print PSNR/SSIM",
        description="Degrade each clean image of DIR (fixed seed), restore it, and print per-image and "
        f"mean PSNR/SSIM of the degraded input ({inputs}), of classical baselines run on the same "
        "degraded inputs, and of the model, with the task's metric convention, and the seconds per "
        "image of the baselines and the model.",
    )
    p.add_argument("--task", choices=TASKS, required=True, help=f"restoration task: {task_help()}")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of clean images")
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the first N images (quick runs)")
    p.add_argument("--crop", type=positive_int, metavar="N", help="centre-crop each image to N x N first (quick runs)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.add_argument(
        "--baseline",
        nargs="+",
        metavar="NAME",
        help=f"classical methods to compare with ({', '.join(BASELINES)}; 'none' for none); default: the "
        f'task\'s that are installed ({defaults}); cbm3d and menon2007 need pip install "tri_panet[{EXTRA}]"',
    )
    add_degradation_flags(p, restore=False)
    add_model_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate the model on --data and print (and with --json, write) the table."""
    json_path = Path(args.json) if args.json else None
    if json_path is not None:
        check_output_file(json_path, args.force)  # a missing folder or an existing file: before the work
    task = get_task(args.task)
    check_degradation_flags(args, task, degrade=True)
    methods = _baselines(args.baseline, task)  # before the model: a missing package fails at once
    device = resolve_device(args.device)
    model, info, source = load_model(args, device, task=task.name)
    name = info.name or args.model
    paths = list_images(args.data)[: args.limit or None]
    inspect_images(paths, info.n_colors)  # what reading them loses (grey to RGB, alpha, ...), one line each
    degradation = fixed_degradation(task, args, info.scale)
    pairs = prepare_eval_pairs(paths, degradation, color=info.n_colors == 3, seed=args.seed, crop=args.crop)
    args.tile = plan_tile(args, model, device, [tuple(p.degraded.shape[-2:]) for p in pairs])  # auto: a side
    print(
        f"model {name or '?'} ({source}); data {args.data} ({len(pairs)} images"
        f"{f', centre crop {args.crop}' if args.crop else ''}); {degradation.describe(args.seed)}"
    )
    print(
        f"metric: PSNR (dB) / SSIM, {task.metric_text(info.scale, info.n_colors)}; tile {args.tile or 'none'}"
        f"{', x8 self-ensemble' if args.self_ensemble else ''}"
    )
    listed = ", ".join(f"{b.label} ({b.name})" for b in methods) or "none"
    print(f"baselines: {listed}; s/img: seconds per image on this machine")

    columns = _columns(task, methods)
    width = max([len(p.name) for p in pairs] + [5])
    head = _line("image", width, columns, lambda c: c.title)
    print(head)

    def show(row: dict, label: str) -> None:
        print(_line(label, width, columns, lambda c: format(row[c.key], c.fmt)), flush=True)

    res = evaluate(
        model,
        pairs,
        task.name,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        self_ensemble=args.self_ensemble,
        dtype=torch_dtype(args.dtype),
        baselines=[b.name for b in methods],
        on_image=lambda row: show(row, row["image"]),
    )
    print("-" * len(head))
    show(res["mean"], "mean")
    if json_path is not None:
        report = _report(args, task.name, name, source, degradation, len(pairs), methods, res)
        write_json(json_path, report, args.force)
        print(f"wrote {json_path}")
    return 0


def _baselines(names: list[str] | None, task: Task) -> list[Baseline]:
    """The baselines of --baseline: those named (each must be installed: else CLIError naming
    the extra), none for ``none``, and by default the task's that are installed (a note
    on stderr for each that is not)."""
    if names is None:
        methods = []
        for default in task.baselines:
            try:
                methods.append(get_baseline(default, task.name))
            except BaselineUnavailable as e:
                print(f"note: {e}; skipped", file=sys.stderr)
        return methods
    if "none" in names:
        if len(names) > 1:
            raise CLIError("--baseline none cannot be combined with other baselines")
        return []
    try:
        return [get_baseline(n, task.name) for n in dict.fromkeys(names)]  # once each, in the order given
    except BaselineUnavailable as e:
        raise CLIError(str(e)) from None


@dataclass(frozen=True)
class _Column:
    """One column of the table: its title, the row key it shows and the value's format."""

    title: str
    key: str
    fmt: str

    @property
    def width(self) -> int:
        """Characters of the column: its title's, at least 7 (an SSIM or a PSNR up to 999.999)."""
        return max(len(self.title), 7)


def _columns(task: Task, methods: list[Baseline]) -> list[list[_Column]]:
    """The column groups after the image name: the degraded input (PSNR, SSIM), then each
    baseline and the model (PSNR, SSIM, seconds per image); keys as in ``evaluate``'s rows."""

    def group(label: str, prefix: str, seconds: str | None) -> list[_Column]:
        cols = [_Column(f"{label} PSNR", f"{prefix}_psnr", ".3f"), _Column("SSIM", f"{prefix}_ssim", ".4f")]
        return cols + ([_Column("s/img", seconds, ".3f")] if seconds else [])

    return [
        group(task.input_name, "input", None),
        *(group(b.label, b.name, f"{b.name}_seconds") for b in methods),
        group("model", "model", "seconds"),
    ]


def _line(label: str, width: int, columns: list[list[_Column]], cell: Callable[[_Column], str]) -> str:
    """One line of the table: ``label`` left-aligned in ``width``, then ``cell(column)`` for
    each column, right-aligned in the column's width (one space apart, groups two), so the
    header and the rows line up."""
    return label.ljust(width) + "".join("  " + " ".join(cell(c).rjust(c.width) for c in group) for group in columns)


def _report(
    args: argparse.Namespace, task: str, name, source: str, degradation, images: int, methods: list[Baseline], res: dict
) -> dict:
    """The --json document: the settings and the numbers."""
    return {
        "task": task,
        "model": name,
        "weights": source,
        "data": str(args.data),
        "images": images,
        "degradation": repr(degradation),
        "degradation_text": degradation.describe(args.seed),
        "seed": args.seed,
        "crop": args.crop,
        "tile": args.tile,
        "tile_overlap": args.tile_overlap,
        "self_ensemble": args.self_ensemble,
        "baseline": get_task(task).input_name,  # the input column's name (kept from before --baseline)
        "baselines": [b.name for b in methods],
        "convention": res["convention"],
        "rows": res["rows"],
        "mean": res["mean"],
        "command": args.command_line,
    }
