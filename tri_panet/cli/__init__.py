"""The ``tri-panet`` command line: restore, eval, train, finetune, demo, models, attention-map.

One module per command (``restore``, ``evaluate``, ``train`` for train and finetune,
``demo``, ``models``, ``attention_map``), each with ``add_parser(sub)`` and ``run(args)``;
what they share is in :mod:`.common`. Every subcommand has ``--help``. User errors (unreadable images or weights,
missing weights, outputs that exist, bad settings, jobs that cannot fit) end with one line on
stderr, ``tri-panet <command>: error: ...``, and exit status 2; set ``TRI_PANET_DEBUG=1``
to see the traceback instead.

Multi-process training: ``torchrun --nproc_per_node N --no-python tri-panet train ...``
(or ``torchrun ... -m tri_panet.cli train ...``). The benchmark report is not a
subcommand: ``python bench/report.py``.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import attention_map, demo, evaluate, models, restore, train
from .common import CLIError, command_line, process_settings

__all__ = ["main", "build_parser"]

_COMMANDS = (restore, evaluate, train, demo, models, attention_map)

_USER_ERRORS = (
    CLIError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``tri-panet`` argument parser."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="tri-panet",
        description="Pyramid-attention image restoration: restore images, evaluate, train, demo.",
        epilog="Start with: tri-panet demo",
    )
    parser.add_argument("--version", action="version", version=f"tri-panet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tri-panet`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("TRI_PANET_DEBUG", "") not in ("", "0")
    command = argv[0] if argv else ""
    try:
        args = build_parser().parse_args(argv)
        args.command_line = command_line(argv)
        with process_settings(args):
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
