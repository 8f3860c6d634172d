"""Experiment: seconds per phase of chunked.c's backward (built with -DTIMING), for tuning.

python bench/experiments/fused_cpu/phases.py [--size 48] [--tile 16] [--chunk 16] [--reps 3]
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
from pathlib import Path

import chunked
import torch
from fused_cpu import inputs

PHASES = ["gram q", "patch q", "gram v", "patch v+dot", "pass2 elem", "paste across", "paste down",
          "colprod v", "rowprod gq", "colprod gk"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--tile", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        chunked.build(Path(folder), extra_flags=["-DTIMING"])
        lib = chunked.LIBS[torch.float32]
        query, keys, values = inputs(args.size)
        grad_out = torch.randn(1, 32, args.size, args.size)
        _, lse = chunked.forward(query, keys, values, args.tile, args.chunk)
        seconds = (ctypes.c_double * 16).in_dll(lib, "phase_seconds_f32")
        for _ in range(args.reps):
            chunked.backward(grad_out, query, keys, values, lse, args.tile, args.chunk)
        total = sum(seconds[: len(PHASES)])
        for i, name in enumerate(PHASES):
            print(f"{name:14s} {seconds[i] / args.reps * 1e3:7.1f} ms {seconds[i] / total * 100:5.1f} %")
        print(f"total {total / args.reps * 1e3:.1f} ms per backward")


if __name__ == "__main__":
    main()
