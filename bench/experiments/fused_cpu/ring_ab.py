"""Experiment: the forward with ring buffers (ring_forward.patch) against the unchanged one, calls alternating.

    git apply bench/experiments/fused_cpu/ring_forward.patch
    python bench/experiments/fused_cpu/ring_ab.py [--size 48] [--tile 16] [--chunk 16] [--pairs 40]
    git apply -R bench/experiments/fused_cpu/ring_forward.patch

The patch keeps the unchanged forward under -DOLD_FWD, so both builds come from one source and
are timed in one process, one call of each in turn (one thread, tiny configuration, float32):
on a machine whose calls wander by 20-40 %, pairs compare better than two separate runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from chunked import kernel_options
from fused_cpu import inputs

from tri_panet.ops import cpu_fused

BUILDS = {"ring": "", "unchanged": "-DOLD_FWD"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--tile", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    query, keys, values = inputs(args.size)
    options = kernel_options(args.tile, args.chunk)
    seconds: dict[str, list[float]] = {name: [] for name in BUILDS}
    for flags in BUILDS.values():  # build (first use) and warm up
        os.environ["TRI_PANET_CPU_CFLAGS"] = flags
        cpu_fused.forward(query, keys, values, **options)
    for _ in range(args.pairs):
        for name, flags in BUILDS.items():
            os.environ["TRI_PANET_CPU_CFLAGS"] = flags
            start = time.perf_counter()
            cpu_fused.forward(query, keys, values, **options)
            seconds[name].append(time.perf_counter() - start)
    for name, times in seconds.items():
        print(f"{name:9s} fastest {min(times) * 1e3:7.1f} ms, median {statistics.median(times) * 1e3:7.1f} ms")
    ratios = [old / new for old, new in zip(seconds["unchanged"], seconds["ring"])]
    print(f"unchanged / ring: median of pairs {statistics.median(ratios):.3f}, "
          f"fastest over fastest {min(seconds['unchanged']) / min(seconds['ring']):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
