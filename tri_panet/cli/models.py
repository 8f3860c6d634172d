"""``tri-panet models``: list the registry and the bundled weights."""

from __future__ import annotations

import argparse

from ..models import available_models, bundled_weights, model_info


def add_parser(sub) -> None:
    """Register ``models`` on the subcommand parsers ``sub``."""
    p = sub.add_parser(
        "models",
        help="list the registered models and the bundled weights",
        description="List the registry: name, task, whether weights are bundled, description.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per registered model."""
    bundled = set(bundled_weights())
    for name in available_models():
        info = model_info(name)
        mark = "bundled" if name in bundled else "-"
        print(f"{name:<16} {info['task']:<9} {mark:<8} {info['description']}")
    return 0
