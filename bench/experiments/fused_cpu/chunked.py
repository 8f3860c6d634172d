"""Experiment: the library's fused C kernel (backend "cpu_fused", kernels/cpu_pyramid.c) against the torch path.

    python bench/experiments/fused_cpu/chunked.py [--sizes 24 48 96] [--tiles 12 16] [--chunks 8 16] [--threads 1]
        [--cflags=-DUB=12 ...]

--threads N gives both N threads (the kernel runs N bands of query rows at once). Every build
(the default, and one per --cflags, through TRI_PANET_CPU_CFLAGS) is checked against the torch
path in float64 first (23 px query, 7 px tiles, chunks of 3 key rows), then all are timed in one
run: batch 1, tiny configuration (Cq 16, Cv 32), float32, the fastest of 7 calls (3 at 96 px).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import time
from functools import partial

import torch
from fused_cpu import OPTIONS, inputs

from tri_panet.ops import cpu_fused, torch_tiled


def best_seconds(fn, reps: int) -> float:
    """Fastest of ``reps`` calls after a warm-up (the minimum is the least disturbed)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def kernel_options(tile: int, chunk: int) -> dict:
    return dict(OPTIONS, tile=tile, chunk_rows=chunk, tile_bytes=torch_tiled.DEFAULT_TILE_BYTES)


def check() -> None:
    """The kernel's float64 forward, lse and every gradient equal the torch path's (raises otherwise)."""
    query, keys, values = inputs(23, torch.float64)
    out, lse = torch_tiled.forward(query, keys, values, **OPTIONS, tile_bytes=2**27)
    grad_out = torch.randn(1, 32, 23, 23, dtype=torch.float64)
    grads = torch_tiled.backward(grad_out, query, keys, values, lse, **OPTIONS, tile_bytes=2**27)
    mine, my_lse = cpu_fused.forward(query, keys, values, **kernel_options(7, 3))
    my_grads = cpu_fused.backward(grad_out, query, keys, values, my_lse, **kernel_options(7, 3))
    pairs = [(mine, out), (my_lse, lse), (my_grads[0], grads[0])]
    pairs += [*zip(my_grads[1], grads[1]), *zip(my_grads[2], grads[2])]
    worst = max((a - b).abs().max().item() for a, b in pairs)
    assert worst < 1e-10, worst
    threads = torch.get_num_threads()
    print(f"check ({threads} threads): float64 max abs difference (forward, lse, every gradient) {worst:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 48, 96])
    parser.add_argument("--tiles", type=int, nargs="+", default=[12, 16])
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--threads", type=int, default=1)
    extra = "also time a build with these extra compiler flags (repeatable): --cflags=-DUB=12"
    parser.add_argument("--cflags", action="append", default=[], metavar="FLAGS", help=extra)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    builds = ["", *args.cflags]
    for flags in builds:
        os.environ["TRI_PANET_CPU_CFLAGS"] = flags
        check()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), "unknown")
    print(f"cpu: {cpu}; torch {torch.__version__}; {args.threads} thread(s), float32, batch 1; "
          "fastest of 7 calls (3 at 96 px)")  # fmt: skip
    for size in args.sizes:
        query, keys, values = inputs(size)
        reps = 7 if size <= 48 else 3
        opts = dict(OPTIONS, tile_bytes=torch_tiled.DEFAULT_TILE_BYTES)
        grad_out = torch.randn(1, 32, size, size)
        _, lse = torch_tiled.forward(query, keys, values, **opts)
        old_f = best_seconds(partial(torch_tiled.forward, query, keys, values, **opts), reps)
        old_b = best_seconds(partial(torch_tiled.backward, grad_out, query, keys, values, lse, **opts), reps)
        for flags, tile, chunk in itertools.product(builds, args.tiles, args.chunks):
            os.environ["TRI_PANET_CPU_CFLAGS"] = flags
            kernel = kernel_options(tile, chunk)
            new_f = best_seconds(partial(cpu_fused.forward, query, keys, values, **kernel), reps)
            new_b = best_seconds(partial(cpu_fused.backward, grad_out, query, keys, values, lse, **kernel), reps)
            label = f"size {size:3d} tile {tile:2d} chunk {chunk:2d}" + (f" {flags}" if flags else "")
            print(f"{label}: forward torch {old_f * 1e3:7.1f} ms, "
                  f"chunked {new_f * 1e3:7.1f} ms (x{old_f / new_f:.2f}); forward+backward torch "
                  f"{(old_f + old_b) * 1e3:7.1f} ms, chunked {(new_f + new_b) * 1e3:7.1f} ms "
                  f"(x{(old_f + old_b) / (new_f + new_b):.2f})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
