"""Experiment: seconds per phase of the CPU kernel's backward (kernels/cpu_pyramid.c built with -DTIMING).

python bench/experiments/fused_cpu/phases.py [--size 48] [--tile 16] [--chunk 16] [--reps 3]
"""

from __future__ import annotations

import argparse
import ctypes
import os

import torch
from chunked import kernel_options
from fused_cpu import inputs

from tri_panet.ops import cpu_build, cpu_fused

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
    os.environ["TRI_PANET_CPU_CFLAGS"] = "-DTIMING"
    lib = cpu_build.load(torch.float32, 16, 32, ("-DTIMING",))
    query, keys, values = inputs(args.size)
    grad_out = torch.randn(1, 32, args.size, args.size)
    options = kernel_options(args.tile, args.chunk)
    _, lse = cpu_fused.forward(query, keys, values, **options)
    seconds = (ctypes.c_double * 16).in_dll(lib, "phase_seconds_f32")
    for _ in range(args.reps):
        cpu_fused.backward(grad_out, query, keys, values, lse, **options)
    total = sum(seconds[: len(PHASES)])
    for i, name in enumerate(PHASES):
        print(f"{name:14s} {seconds[i] / args.reps * 1e3:7.1f} ms {seconds[i] / total * 100:5.1f} %")
    print(f"total {total / args.reps * 1e3:.1f} ms per backward")


if __name__ == "__main__":
    main()
