"""``tri-panet restore``: restore an image, or every image of a folder, with a model.

Nothing is written until everything that can be checked has been: the output names (two
inputs may not share one), the overwrite rules, the outputs' folder, the size of the
job (:func:`~.common.plan_tile`) and a full decode of every input. So a bad file or a
bad flag leaves no output and no empty folder; an interrupted folder run resumes with
``--skip-existing``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .._files import check_can_create, check_writable
from .._text import listing
from ..data.image import modcrop
from ..data.io import IMAGE_EXTENSIONS, list_images, save_image, verify_image
from ..data.seeding import sample_generator
from ..device import resolve_device
from ..evaluation import score
from ..inference import restore, restore_luma
from ..tasks import TASKS, get_task
from .common import (
    CLIError,
    add_degradation_flags,
    add_model_flags,
    check_degradation_flags,
    fixed_degradation,
    inspect_images,
    load_input,
    load_model,
    plan_tile,
    task_help,
    task_of,
    torch_dtype,
)


def add_parser(sub) -> None:
    """Register ``restore`` on the subcommand parsers ``sub``."""
    p = sub.add_parser(
        "restore",
        help="restore an image or a folder of images",
        description="Restore an image (or every image of a folder) with a restoration model. "
        "Inputs are never overwritten; existing outputs only with --force.",
    )
    p.add_argument("input", help="image file or folder")
    p.add_argument("-o", "--output", required=True, help="output image (for a file) or folder (for a folder; PNGs)")
    p.add_argument("--task", choices=TASKS, help=f"restoration task: {task_help()} (default: the model's)")
    p.add_argument(
        "--degrade",
        action="store_true",
        help="treat INPUT as clean: apply the task's degradation first and print PSNR before/after",
    )
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--force", action="store_true", help="overwrite existing outputs")
    existing.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave existing outputs alone and restore the other inputs (resumes a folder run)",
    )
    add_degradation_flags(p, restore=True)
    add_model_flags(p)
    p.set_defaults(func=run)


def _pairs(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    """(input, output) file pairs: a file to a file, or every image of a folder to a PNG of
    the same name in the output folder."""
    if not inp.exists():
        raise CLIError(f"input {str(inp)!r} does not exist")
    if inp.is_dir():
        if out.exists() and not out.is_dir():
            raise CLIError(f"input is a folder, so -o must be a folder; {out} is a file")
        if out.resolve() == inp.resolve():
            raise CLIError("the output folder is the input folder; choose another -o (inputs are never overwritten)")
        return [(p, out / (p.stem + ".png")) for p in list_images(inp)]
    if out.is_dir():
        raise CLIError(f"-o {out} is a folder; give an output file name (e.g. {out / (inp.stem + '.png')})")
    if out.suffix.lower() not in IMAGE_EXTENSIONS:
        raise CLIError(f"-o {out}: unknown image extension {out.suffix!r} (use .png for a lossless result)")
    return [(inp, out)]


def _plan(inp: Path, out: Path, force: bool, skip_existing: bool = False) -> list[tuple[int, Path, Path]]:
    """The (index, input, output) triples to restore, ``index`` the input's place in the
    folder (it seeds --degrade, so a resumed run degrades as a whole one). Refuses two
    inputs with one output name (``x.png`` and ``x.jpg``: one result would replace the
    other), overwriting an input, and existing outputs unless ``force`` (replace them) or
    ``skip_existing`` (leave them and their inputs out)."""
    plan = _pairs(inp, out)
    seen: dict[Path, Path] = {}
    for src, dst in plan:
        if dst in seen:
            raise CLIError(
                f"{seen[dst]} and {src} would both be written to {dst}; "
                "rename one (outputs are named after the input without its extension)"
            )
        seen[dst] = src
        if dst.resolve() == src.resolve():
            raise CLIError(f"refusing to overwrite the input {src}")
    existing = [d for _, d in plan if d.exists()]
    if skip_existing and existing:
        print(f"skipping {len(existing)} image(s) whose output exists", file=sys.stderr)
    elif existing and not force:
        raise CLIError(f"output exists: {listing(existing)}; pass --force to overwrite, or --skip-existing to leave it")
    return [(i, s, d) for i, (s, d) in enumerate(plan) if not (skip_existing and d.exists())]


def _check_output(inp: Path, out: Path) -> None:
    """Refuse an output that cannot be written, before the work: the folder of an output
    file must exist; an output folder must be creatable (it is made only once every
    check has passed, so a failed run leaves no empty folder)."""
    if inp.is_dir():
        check_can_create(out)
    elif not out.parent.exists():
        raise CLIError(f"output folder {str(out.parent)!r} does not exist")
    else:
        check_writable(out)


def run(args: argparse.Namespace) -> int:
    """Restore every planned image; with --degrade, degrade it first and print the PSNRs."""
    from tqdm.auto import tqdm

    inp, out = Path(args.input), Path(args.output)
    plan = _plan(inp, out, args.force, args.skip_existing)
    if args.task is not None:  # refuse wrong flags before loading a model
        check_degradation_flags(args, get_task(args.task), degrade=args.degrade)
    if not plan:
        print("nothing to restore: every output exists")
        return 0
    _check_output(inp, out)
    device = resolve_device(args.device)
    model, info, source = load_model(args, device, task=args.task)
    task = task_of(args, info)
    check_degradation_flags(args, task, degrade=args.degrade)
    degradation = fixed_degradation(task, args, info.scale) if args.degrade else None
    luma_only = info.n_colors == 1 and task.from_grey is None  # a grey model keeps the colours of colour files
    headers = inspect_images([src for _, src, _ in plan], info.n_colors, task, writes_8bit=True, keeps_colour=luma_only)
    if luma_only and any(h.channels == 3 for h in headers):
        print("note: a grey model: colour images get their luma (JFIF Y) restored, their chroma kept", file=sys.stderr)
    shrink = degradation.scale if degradation is not None else 1  # --degrade of sr: the model sees the LR image
    tile = plan_tile(args, model, device, [(h.height // shrink, h.width // shrink) for h in headers])
    for _, src, _ in plan:  # a truncated file fails here, before the first result is written
        verify_image(src)
    if inp.is_dir():
        out.mkdir(parents=True, exist_ok=True)
    name = info.name or args.model
    print(f"restoring {len(plan)} image(s) with {name or source} ({source}), task {task.name}")
    bar = tqdm(plan, unit="img", disable=len(plan) < 2, file=sys.stderr)
    for (i, src, dst), header in zip(bar, headers):
        x = load_input(src, info.n_colors, task, header.channels, keep_colour=luma_only)
        clean = None
        if degradation is not None:
            clean = modcrop(x, info.scale)
            x = degradation(clean, sample_generator(args.seed, 0, i))
        y = (restore_luma if luma_only and x.shape[0] == 3 else restore)(
            model,
            x,
            tile=tile,
            tile_overlap=args.tile_overlap,
            self_ensemble=args.self_ensemble,
            dtype=torch_dtype(args.dtype),
        )
        try:
            save_image(y.float().cpu(), dst, overwrite=args.force)
        except FileExistsError:  # it appeared while this run was busy
            raise CLIError(f"{dst} appeared during the run; pass --force to overwrite it, or --skip-existing") from None
        if clean is not None:
            row = score(task, x, y, clean, info.scale, with_ssim=False)
            print(
                f"{src.name}: PSNR degraded {row['input_psnr']:.2f} dB -> restored {row['model_psnr']:.2f} dB -> {dst}"
            )
        else:
            print(f"{src} -> {dst}")
    return 0
