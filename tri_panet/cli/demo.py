"""``tri-panet demo``: denoise a bundled photo with the bundled tiny model (no data needed)."""

from __future__ import annotations

import argparse

from ..demo import run_demo
from ..device import resolve_device
from .common import add_threads_flag, add_tiling_flags


def add_parser(sub) -> None:
    """Register ``demo`` on the subcommand parsers ``sub``."""
    p = sub.add_parser(
        "demo",
        help="denoise a bundled photo with the bundled tiny model (no data needed)",
        description="Add noise to a photo that ships with scikit-image, restore it with the bundled "
        "fast-denoise model, write a before/after PNG and print the PSNRs and time.",
    )
    p.add_argument("-o", "--output-dir", default=".", metavar="DIR", help="folder for tri_panet_demo.png (default: .)")
    p.add_argument("--sigma", type=float, default=25.0, help="AWGN sigma, 0-255 scale (default 25)")
    p.add_argument("--size", type=int, default=256, metavar="N", help="resize the photo to N x N (default 256)")
    p.add_argument("--image", default="astronaut", help="skimage.data photo: astronaut, coffee, chelsea, ...")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    add_tiling_flags(p, default_tile=64)
    p.add_argument("--weights", metavar="FILE", help="use this .safetensors instead of the bundled weights")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    p.add_argument("--force", action="store_true", help="overwrite an existing picture")
    add_threads_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run :func:`tri_panet.demo.run_demo` with the flags."""
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
        device=str(resolve_device(args.device)),
    )
    return 0
