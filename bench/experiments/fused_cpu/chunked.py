"""Experiment: the whole forward fused and key-chunked in C (chunked.c), against the torch path.

Not part of the library (see README.md beside this file).

    python bench/experiments/fused_cpu/chunked.py [--sizes 24 48 96] [--tiles 8] [--chunks 4 8] [--threads 1]
        [--cflags=-DUB=12 ...]

--threads N gives the torch path N threads and runs the kernel on N bands of query rows at once.

Checks the forward and lse against ``tri_panet.ops.torch_tiled`` in float64 first (23 px query,
7 px tiles, chunks of 3 key rows), then times both: batch 1, tiny configuration (Cq 16, Cv 32).
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from fused_cpu import OPTIONS, Levels, inputs, ptr, unpad_gradients

from tri_panet.ops import torch_tiled

LIBS: dict[torch.dtype, ctypes.CDLL] = {}
PAD = 32  # >= chunked.c's JB (2 vectors: 32 floats at most)


def build(folder: Path, cq: int = 16, cv: int = 32, extra_flags: tuple[str, ...] = ()) -> None:
    """Compile chunked.c for float and double into ``folder`` (into LIBS)."""
    source = Path(__file__).with_name("chunked.c")
    for dtype, real, suffix in ((torch.float32, "float", "_f32"), (torch.float64, "double", "_f64")):
        obj, lib = folder / f"c{suffix}.o", folder / f"c{suffix}.so"
        flags = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC", f"-DREAL={real}",
                 f"-DSUFFIX={suffix}", f"-DCQ={cq}", f"-DCV={cv}", *extra_flags]  # fmt: skip
        subprocess.run(["cc", *flags, "-c", str(source), "-o", str(obj)], check=True)
        subprocess.run(["cc", "-shared", str(obj), "-o", str(lib), "-lm"], check=True)
        LIBS[dtype] = ctypes.CDLL(str(lib))


def row_bands(height: int, threads: int) -> list[tuple[int, int]]:
    """Query rows [start, stop) per thread, as even as they split (each band is tiled on its own:
    whole tile rows would leave 2 : 1 bands at 48 px with tiles of 16)."""
    cuts = [round(i * height / threads) for i in range(threads + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if a < b]


def in_bands(height: int, threads: int, band_fn) -> list:
    """``band_fn(start, stop)`` for every band of query rows, on ``threads`` threads (ctypes releases the
    GIL during the kernel call, so the bands run in parallel)."""
    bands = row_bands(height, threads)
    if len(bands) == 1:
        return [band_fn(*bands[0])]
    with ThreadPoolExecutor(len(bands)) as pool:
        return list(pool.map(lambda band: band_fn(*band), bands))


def forward_band(fn, layout, lv, query_padded, keys_ext, values_ext, lse_b, tile, chunk, start, stop):
    """The forward kernel on query rows [start, stop) of one image: (start, stop, its padded output
    rows start .. stop + 1, which overlap the next band's); lse_b's rows filled in place."""
    q_band, lse_band = query_padded[start : stop + 2], lse_b[start:stop]
    out_band = query_padded.new_zeros(stop - start + 2, query_padded.shape[1], values_ext.shape[1])
    fn(ctypes.byref(layout), stop - start, query_padded.shape[1] - 2, tile, tile, chunk, ptr(q_band),
       ptr(keys_ext), ptr(values_ext), ptr(lv.scale), ptr(lv.bias), ptr(out_band), ptr(lse_band))  # fmt: skip
    return start, stop, out_band


def forward(query, keys, values, tile: int, chunk: int, threads: int = 1):
    """(out [B, Cv, H, W], lse [B, H W]) as torch_tiled.forward; the kernel on ``threads`` row bands."""
    batch, _, height, width = query.shape
    dtype, cv = query.dtype, values[0].shape[1]
    fn = getattr(LIBS[dtype], "image_forward" + ("_f32" if dtype == torch.float32 else "_f64"))
    out = query.new_zeros(batch, height + 2, width + 2, cv)
    lse = query.new_empty(batch, height, width)
    for b in range(batch):
        lv = Levels(keys, values, b, dtype)
        layout = lv.layout(tile, tile)
        layout.n_cols += PAD  # the kernel reads up to PAD columns past the last level
        keys_ext, values_ext = F.pad(lv.keys, (0, PAD)), F.pad(lv.values_t, (0, 0, 0, PAD))
        query_padded = F.pad(query[b], (1, 1, 1, 1)).permute(1, 2, 0).contiguous()
        band = partial(forward_band, fn, layout, lv, query_padded, keys_ext, values_ext, lse[b], tile, chunk)
        for start, stop, out_band in in_bands(height, threads, band):
            out[b, start : stop + 2] += out_band
    return out[:, 1 : height + 1, 1 : width + 1].permute(0, 3, 1, 2) / OPTIONS["fold_divisor"], lse.view(batch, -1)


def backward_band(fn, layout, lv, query_padded, grad_padded, maps, lse_b, tile, chunk, start, stop):
    """The backward kernel on query rows [start, stop) of one image: (start, stop, the padded query
    gradient rows start .. stop + 1, and this band's share of the per-slot scale, key and value
    gradients); ``maps`` = (keys_ext, keys_t, values_t)."""
    keys_ext, keys_t, values_t = maps
    n_cols, cq, cv = layout.n_cols, keys_t.shape[1], values_t.shape[0]
    q_band, g_band, lse_band = query_padded[start : stop + 2], grad_padded[start : stop + 2], lse_b[start:stop]
    grad_scale = query_padded.new_zeros(lv.n_slots)
    grad_keys_padded, grad_values_padded = query_padded.new_zeros(n_cols, cq), query_padded.new_zeros(n_cols, cv)
    grad_query_band = torch.zeros_like(q_band)
    fn(ctypes.byref(layout), stop - start, query_padded.shape[1] - 2, tile, tile, chunk, ptr(q_band), ptr(g_band),
       ptr(keys_ext), ptr(keys_t), ptr(values_t), ptr(lv.scale), ptr(lv.bias), ptr(lse_band),
       ptr(grad_query_band), ptr(grad_keys_padded), ptr(grad_values_padded), ptr(grad_scale))  # fmt: skip
    return start, stop, grad_query_band, grad_scale, grad_keys_padded, grad_values_padded


def backward(grad_out, query, keys, values, lse, tile: int, chunk: int, threads: int = 1):
    """(grad_query, grad_keys, grad_values) as torch_tiled.backward; the kernel on ``threads`` row bands."""
    batch, cq, height, width = query.shape
    dtype = query.dtype
    fn = getattr(LIBS[dtype], "image_backward" + ("_f32" if dtype == torch.float32 else "_f64"))
    grad_query = query.new_zeros(batch, height + 2, width + 2, cq)
    grad_keys, grad_values = [torch.zeros_like(k) for k in keys], [torch.zeros_like(v) for v in values]
    lse = lse.view(batch, height, width)
    for b in range(batch):
        lv = Levels(keys, values, b, dtype)
        layout = lv.layout(tile, tile)
        layout.n_cols += PAD
        keys_ext = F.pad(lv.keys, (0, PAD))
        keys_t, values_t = keys_ext.t().contiguous(), F.pad(lv.values_t, (0, 0, 0, PAD)).t().contiguous()
        query_padded = F.pad(query[b], (1, 1, 1, 1)).permute(1, 2, 0).contiguous()
        grad_padded = F.pad(grad_out[b] / OPTIONS["fold_divisor"], (1, 1, 1, 1)).permute(1, 2, 0).contiguous()
        maps = (keys_ext, keys_t, values_t)
        band = partial(backward_band, fn, layout, lv, query_padded, grad_padded, maps, lse[b].contiguous(), tile, chunk)
        results = in_bands(height, threads, band)
        for start, stop, grad_query_band, *_ in results:
            grad_query[b, start : stop + 2] += grad_query_band
        grad_scale, grad_keys_padded, grad_values_padded = (sum(parts) for parts in list(zip(*results))[3:])
        unpad_gradients(lv, keys, b, grad_scale, grad_keys_padded, grad_values_padded, grad_keys, grad_values)
    return grad_query[:, 1 : height + 1, 1 : width + 1].permute(0, 3, 1, 2).contiguous(), grad_keys, grad_values


def best_seconds(fn, reps: int) -> float:
    """Fastest of ``reps`` calls after a warm-up (the other core may be busy: the minimum is the
    least disturbed)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def check(threads: int = 1) -> None:
    query, keys, values = inputs(23, torch.float64)
    out, lse = torch_tiled.forward(query, keys, values, **OPTIONS, tile_bytes=2**27)
    grad_out = torch.randn(1, 32, 23, 23, dtype=torch.float64)
    grads = torch_tiled.backward(grad_out, query, keys, values, lse, **OPTIONS, tile_bytes=2**27)
    mine, my_lse = forward(query, keys, values, tile=7, chunk=3, threads=threads)
    my_grads = backward(grad_out, query, keys, values, my_lse, tile=7, chunk=3, threads=threads)
    pairs = [
        (mine, out),
        (my_lse, lse),
        (my_grads[0], grads[0]),
        *zip(my_grads[1], grads[1]),
        *zip(my_grads[2], grads[2]),
    ]
    worst = max((a - b).abs().max().item() for a, b in pairs)
    assert worst < 1e-10, worst
    q32, k32, v32 = (query.float(), [k.float() for k in keys], [v.float() for v in values])
    m32, l32 = forward(q32, k32, v32, tile=7, chunk=3, threads=threads)
    worst32 = max((m32 - out).abs().max().item(), (l32 - lse).abs().max().item())
    print(
        f"check: float64 max abs difference (forward, lse, every gradient) {worst:.1e}; float32 forward {worst32:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 48, 96])
    parser.add_argument("--tiles", type=int, nargs="+", default=[8])
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--cflags",
        action="append",
        default=[],
        metavar="FLAGS",
        help="also time a build with these extra compiler flags (repeatable): --cflags=-DUB=12",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    builds = {}
    with tempfile.TemporaryDirectory() as folder:
        for n, flags in enumerate(["", *args.cflags]):  # every build is checked, then all are timed in one run
            (Path(folder) / str(n)).mkdir()
            build(Path(folder) / str(n), extra_flags=tuple(flags.split()))
            check(args.threads)
            builds[flags] = dict(LIBS)
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), "unknown")
        print(
            f"cpu: {cpu}; torch {torch.__version__}; {args.threads} thread(s), float32, batch 1; "
            "fastest of 7 calls (3 at 96 px)"
        )
        for size in args.sizes:
            query, keys, values = inputs(size)
            reps = 7 if size <= 48 else 3
            opts = dict(OPTIONS, tile_bytes=torch_tiled.DEFAULT_TILE_BYTES)
            grad_out = torch.randn(1, 32, size, size)
            _, lse = torch_tiled.forward(query, keys, values, **opts)
            old_f = best_seconds(partial(torch_tiled.forward, query, keys, values, **opts), reps)
            old_b = best_seconds(partial(torch_tiled.backward, grad_out, query, keys, values, lse, **opts), reps)
            for (flags, libs), tile, chunk in itertools.product(builds.items(), args.tiles, args.chunks):
                LIBS.update(libs)
                kernel = dict(tile=tile, chunk=chunk, threads=args.threads)
                new_f = best_seconds(partial(forward, query, keys, values, **kernel), reps)
                new_b = best_seconds(partial(backward, grad_out, query, keys, values, lse, **kernel), reps)
                label = f"size {size:3d} tile {tile:2d} chunk {chunk:2d}" + (f" {flags}" if flags else "")
                print(f"{label}: forward torch {old_f * 1e3:7.1f} ms, "
                      f"chunked {new_f * 1e3:7.1f} ms (x{old_f / new_f:.2f}); forward+backward torch "
                      f"{(old_f + old_b) * 1e3:7.1f} ms, chunked {(new_f + new_b) * 1e3:7.1f} ms "
                      f"(x{(old_f + old_b) / (new_f + new_b):.2f})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
