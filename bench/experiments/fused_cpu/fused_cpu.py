"""Experiment: the torch path with its element-wise work fused in C (kernels.c), against the torch path.

Not part of the library (see README.md beside this file for why and what it measured). The
Gram matrices and the value / key products stay PyTorch GEMMs; kernels.c does, per query tile,
the 3 x 3 patch sums, scaling, softmax (and its backward) and the paste, in one pass each.

    python bench/experiments/fused_cpu/fused_cpu.py [--sizes 24 48 96] [--tiles 8 12] [--threads 1 2]

Checks forward and backward against ``tri_panet.ops.torch_tiled`` in float64 first (a 23 px
query, 7 px tiles: partial tiles and five levels), then prints the times of both, batch 1,
the tiny models' configuration (Cq 16, Cv 32, levels 1.0 .. 0.6). Needs gcc or clang.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))
from op_inputs import make_inputs, pyramid_sizes  # noqa: E402

from tri_panet.ops import torch_tiled  # noqa: E402
from tri_panet.ops.cpu_fused import _Layout  # noqa: E402

SCALE, EPS, DIVISOR = 10.0, 1e-4, 4.0
OPTIONS = dict(patch_size=3, softmax_scale=SCALE, key_eps=EPS, fold_divisor=DIVISOR)


Layout = _Layout  # kernels/cpu_common.h's tile_layout


def build(folder: Path) -> dict[torch.dtype, ctypes.CDLL]:
    """Compile kernels.c for float and double into ``folder``; dtype -> library. (Every tensor whose
    pointer a kernel gets must stay referenced by a name until the call returns.)"""
    source = Path(__file__).with_name("kernels.c")
    libs = {}
    for dtype, real, suffix in ((torch.float32, "float", "_f32"), (torch.float64, "double", "_f64")):
        obj, lib = folder / f"k{suffix}.o", folder / f"k{suffix}.so"
        flags = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", f"-DREAL={real}", f"-DSUFFIX={suffix}",
                 f"-I{ROOT / 'kernels'}"]  # fmt: skip
        subprocess.run(["cc", *flags, "-c", str(source), "-o", str(obj)], check=True)
        # linked without -ffast-math: that would link crtfastmath and flush subnormals process-wide
        subprocess.run(["cc", "-shared", "-fopenmp", str(obj), "-o", str(lib), "-lm"], check=True)
        libs[dtype] = ctypes.CDLL(str(lib))
    return libs


LIBS: dict[torch.dtype, ctypes.CDLL] = {}


def kernel(dtype: torch.dtype, name: str):
    return getattr(LIBS[dtype], name + ("_f32" if dtype == torch.float32 else "_f64"))


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class Levels:
    """One image's pyramid in kernels.c's layouts: padded maps side by side, key slots, their scale."""

    def __init__(self, keys, values, b: int, dtype: torch.dtype):
        heights, widths = [k.shape[2] for k in keys], [k.shape[3] for k in keys]
        padded = [(h + 2) * (w + 2) for h, w in zip(heights, widths)]
        slots = [h * (w + 2) for h, w in zip(heights, widths)]
        self.meta = {
            "w": torch.tensor(widths),
            "n_level_slots": torch.tensor(slots),
            "pad_off": torch.tensor([0, *padded[:-1]]).cumsum(0),
            "slot_off": torch.tensor([0, *slots[:-1]]).cumsum(0),
        }
        self.n_cols, self.n_slots, self.n_levels = sum(padded) + 2, sum(slots), len(keys)
        self.pad_slices = [slice(o, o + n) for o, n in zip(self.meta["pad_off"].tolist(), padded)]
        self.slot_slices = [slice(o, o + n) for o, n in zip(self.meta["slot_off"].tolist(), slots)]

        def side_by_side(maps):  # [C, n_cols]: every level zero padded by 1, two zero columns at the end
            c = maps[0].shape[1]
            flat = [F.pad(m[b].to(dtype), (1, 1, 1, 1)).reshape(c, -1) for m in maps]
            return torch.cat([*flat, maps[0].new_zeros(c, 2, dtype=dtype)], 1).contiguous()

        self.keys = side_by_side(keys)  # [Cq, n_cols]
        self.values_t = side_by_side(values).t().contiguous()  # [n_cols, Cv]
        self.norms = torch.cat([torch_tiled._patch_norms(k[b].to(dtype), 3).flatten() for k in keys])
        inv = (SCALE / self.norms.clamp_min(EPS)).split([h * w for h, w in zip(heights, widths)])
        self.scale = self.to_slots(inv, heights, widths, 0.0)
        zeros = [torch.zeros(h * w, dtype=dtype) for h, w in zip(heights, widths)]
        self.bias = self.to_slots(zeros, heights, widths, -1e30)
        self.shapes = list(zip(heights, widths))

    @staticmethod
    def to_slots(per_level, heights, widths, fill: float) -> torch.Tensor:
        return torch.cat(
            [F.pad(x.view(h, w), (0, 2), value=fill).flatten() for x, h, w in zip(per_level, heights, widths)]
        ).contiguous()

    def from_slots(self, x: torch.Tensor) -> torch.Tensor:
        """[n_slots] -> [n_keys] (the keys only, levels in order)."""
        return torch.cat([x[s].view(h, w + 2)[:, :w].flatten() for s, (h, w) in zip(self.slot_slices, self.shapes)])

    def layout(self, rows: int, cols: int) -> Layout:
        pointers = (self.meta[k].data_ptr() for k in ("w", "n_level_slots", "pad_off", "slot_off"))
        return Layout(rows, cols, self.n_levels, self.n_cols, self.n_slots, *pointers)


def tiles(height: int, width: int, tile: int):
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            yield y0, x0, min(tile, height - y0), min(tile, width - x0)


def window(padded: torch.Tensor, y0: int, x0: int, rows: int, cols: int) -> torch.Tensor:
    """[C, H + 2, W + 2] -> the tile's window pixels [(rows + 2) (cols + 2), C]."""
    return padded[:, y0 : y0 + rows + 2, x0 : x0 + cols + 2].reshape(padded.shape[0], -1).t()


def paste(dtype, layout, tile_weights, row_scale, rows, cols, n_cols, threads) -> torch.Tensor:
    across = tile_weights.new_empty(rows * (cols + 2), n_cols)
    out = tile_weights.new_empty((rows + 2) * (cols + 2), n_cols)
    kernel(dtype, "tile_paste")(ctypes.byref(layout), ptr(tile_weights), ptr(row_scale), ptr(across), ptr(out), threads)
    return out


def forward(query, keys, values, tile: int, threads: int):
    """(out [B, Cv, H, W], lse [B, H W]) as torch_tiled.forward."""
    batch, _, height, width = query.shape
    dtype, cv = query.dtype, values[0].shape[1]
    out = query.new_zeros(batch, height + 2, width + 2, cv)
    lse = query.new_empty(batch, height, width)
    for b in range(batch):
        lv = Levels(keys, values, b, dtype)
        query_padded = F.pad(query[b], (1, 1, 1, 1))
        for y0, x0, rows, cols in tiles(height, width, tile):
            layout = lv.layout(rows, cols)
            pixels = window(query_padded, y0, x0, rows, cols)
            gram = torch.mm(pixels, lv.keys)
            weights = query.new_empty(rows * cols, lv.n_slots)
            row_scale, tile_lse = query.new_empty(rows * cols), query.new_empty(rows * cols)
            kernel(dtype, "tile_softmax")(
                ctypes.byref(layout), ptr(gram), ptr(lv.scale), ptr(lv.bias), ptr(weights), ptr(row_scale),
                ptr(tile_lse), threads,
            )  # fmt: skip
            pasted = paste(dtype, layout, weights, row_scale, rows, cols, lv.n_cols, threads)
            out[b, y0 : y0 + rows + 2, x0 : x0 + cols + 2] += torch.mm(pasted, lv.values_t).view(rows + 2, cols + 2, cv)
            lse[b, y0 : y0 + rows, x0 : x0 + cols] = tile_lse.view(rows, cols)
    return out[:, 1 : height + 1, 1 : width + 1].permute(0, 3, 1, 2) / DIVISOR, lse.view(batch, -1)


def unpad_gradients(lv, keys, b, grad_scale, grad_keys_padded, grad_values_padded, grad_keys, grad_values) -> None:
    """Image ``b``'s key and value gradients from the padded side-by-side maps [n_cols, C] and the
    gradient of the per-slot score scale (through scale = SCALE / max(norm, EPS), as
    torch_tiled.backward), into grad_keys[l][b] and grad_values[l][b]."""
    cq, cv = grad_keys_padded.shape[1], grad_values_padded.shape[1]
    norms = lv.norms
    inverse = SCALE / norms.clamp_min(EPS)
    grad_norms = torch.where(norms >= EPS, -lv.from_slots(grad_scale) * inverse / norms.clamp_min(EPS), 0)
    coefficient = (grad_norms / norms.clamp_min(EPS)).split([h * w for h, w in lv.shapes])
    for i, (h, w) in enumerate(lv.shapes):
        c = F.avg_pool2d(coefficient[i].view(1, 1, h, w), 3, 1, 1, count_include_pad=True)[0, 0] * 9
        inner = (slice(None), slice(1, h + 1), slice(1, w + 1))
        grad_keys[i][b] = grad_keys_padded[lv.pad_slices[i]].t().reshape(cq, h + 2, w + 2)[inner] + keys[i][b] * c
        grad_values[i][b] = grad_values_padded[lv.pad_slices[i]].t().reshape(cv, h + 2, w + 2)[inner]


def backward(grad_out, query, keys, values, lse, tile: int, threads: int):
    """(grad_query, grad_keys, grad_values) as torch_tiled.backward."""
    batch, cq, height, width = query.shape
    dtype, cv = query.dtype, values[0].shape[1]
    grad_query = query.new_zeros(batch, height + 2, width + 2, cq)
    grad_keys, grad_values = [torch.zeros_like(k) for k in keys], [torch.zeros_like(v) for v in values]
    lse = lse.view(batch, height, width)
    for b in range(batch):
        lv = Levels(keys, values, b, dtype)
        keys_t = lv.keys.t().contiguous()
        query_padded = F.pad(query[b], (1, 1, 1, 1))
        grad_padded = F.pad(grad_out[b] / DIVISOR, (1, 1, 1, 1))
        grad_scale = query.new_zeros(lv.n_slots)
        grad_keys_padded, grad_values_padded = query.new_zeros(lv.n_cols, cq), query.new_zeros(lv.n_cols, cv)
        for y0, x0, rows, cols in tiles(height, width, tile):
            layout = lv.layout(rows, cols)
            pixels, grad_pixels = (window(x, y0, x0, rows, cols) for x in (query_padded, grad_padded))
            gram, grad_gram = torch.mm(pixels, lv.keys), torch.mm(grad_pixels, lv.values_t.t())
            weights = query.new_empty(rows * cols, lv.n_slots)
            grad_raw = torch.empty_like(weights)
            tile_lse = lse[b, y0 : y0 + rows, x0 : x0 + cols].contiguous()  # named: alive during the call
            kernel(dtype, "tile_softmax_backward")(
                ctypes.byref(layout), ptr(gram), ptr(grad_gram), ptr(lv.scale), ptr(lv.bias), ptr(tile_lse),
                ptr(weights), ptr(grad_raw), ptr(grad_scale), threads,
            )  # fmt: skip
            pasted_weights = paste(dtype, layout, weights, None, rows, cols, lv.n_cols, threads)
            pasted_grad = paste(dtype, layout, grad_raw, None, rows, cols, lv.n_cols, threads)
            grad_values_padded.addmm_(pasted_weights.t(), grad_pixels)
            grad_keys_padded.addmm_(pasted_grad.t(), pixels)
            grad_query[b, y0 : y0 + rows + 2, x0 : x0 + cols + 2] += torch.mm(pasted_grad, keys_t).view(
                rows + 2, cols + 2, cq
            )
        unpad_gradients(lv, keys, b, grad_scale, grad_keys_padded, grad_values_padded, grad_keys, grad_values)
    return grad_query[:, 1 : height + 1, 1 : width + 1].permute(0, 3, 1, 2).contiguous(), grad_keys, grad_values


def inputs(size: int, dtype=torch.float32):
    return make_inputs(1, 16, 32, (size, size), pyramid_sizes(size, size), dtype=dtype)


def seconds(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def check() -> None:
    """Forward and backward equal the torch path's in float64 (raises otherwise)."""
    query, keys, values = inputs(23, torch.float64)
    grad_out = torch.randn(1, 32, 23, 23, dtype=torch.float64)
    out, lse = torch_tiled.forward(query, keys, values, **OPTIONS, tile_bytes=2**27)
    grads = torch_tiled.backward(grad_out, query, keys, values, lse, **OPTIONS, tile_bytes=2**27)
    my_out, my_lse = forward(query, keys, values, tile=7, threads=1)
    mine = backward(grad_out, query, keys, values, my_lse, tile=7, threads=1)
    pairs = [(my_out, out), (my_lse, lse), (mine[0], grads[0]), *zip(mine[1], grads[1]), *zip(mine[2], grads[2])]
    worst = max((a - b).abs().max().item() for a, b in pairs)
    assert worst < 1e-10, worst
    print(f"float64 check against torch_tiled (forward, lse, every gradient): max abs difference {worst:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 48, 96])
    parser.add_argument("--tiles", type=int, nargs="+", default=[8, 12])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        LIBS.update(build(Path(folder)))
        check()
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), "unknown")
        print(f"cpu: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}; float32, batch 1")
        for threads in args.threads:
            torch.set_num_threads(threads)
            for size in args.sizes:
                query, keys, values = inputs(size)
                grad_out = torch.randn(1, 32, size, size)
                reps = 3 if size <= 48 else 1
                with torch.no_grad():
                    opts = dict(OPTIONS, tile_bytes=torch_tiled.DEFAULT_TILE_BYTES)
                    _, lse = torch_tiled.forward(query, keys, values, **opts)
                    old_f = seconds(partial(torch_tiled.forward, query, keys, values, **opts), reps)
                    old_b = seconds(partial(torch_tiled.backward, grad_out, query, keys, values, lse, **opts), reps)
                    for tile in args.tiles:
                        new_f = seconds(partial(forward, query, keys, values, tile, threads), reps)
                        new_b = seconds(partial(backward, grad_out, query, keys, values, lse, tile, threads), reps)
                        print(
                            f"threads {threads} size {size:3d} tile {tile:2d}: forward torch {old_f * 1e3:7.1f} ms, "
                            f"fused {new_f * 1e3:7.1f} ms (x{old_f / new_f:.2f}); forward+backward torch "
                            f"{(old_f + old_b) * 1e3:7.1f} ms, fused {(new_f + new_b) * 1e3:7.1f} ms "
                            f"(x{(old_f + old_b) / (new_f + new_b):.2f})",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
