"""Experiment: the torch path's per-tile forward compiled by torch.compile (inductor), against the torch path.

Not part of the library (README.md beside this file). One query tile's work (the Gram matrix of
every level, the diagonal 3 x 3 sums, scaling, softmax, paste, value product) as a single
function, compiled with static shapes (one graph per tile shape) and with dynamic shapes.

    python bench/experiments/fused_cpu/inductor_tile.py [--sizes 48 96] [--tile 16] [--threads 1]

Checks the compiled forward against the reference in float64 first.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))
from fused_cpu import seconds  # noqa: E402  (beside this file: on sys.path when run as a script)
from op_inputs import make_inputs, pyramid_sizes  # noqa: E402

from tri_panet.ops import torch_tiled  # noqa: E402
from tri_panet.ops.reference import pyramid_attention_reference  # noqa: E402

SCALE, EPS, DIVISOR = 10.0, 1e-4, 4.0


def box_sum(gram):
    """[R + 2, C + 2, h + 2, w + 2] -> [R, C, h, w]: the diagonal 3 x 3 sums."""
    rows, cols, h, w = (s - 2 for s in gram.shape)
    across = gram[:, 0:cols, :, 0:w] + gram[:, 1 : cols + 1, :, 1 : w + 1] + gram[:, 2 : cols + 2, :, 2 : w + 2]
    return across[0:rows, :, 0:h] + across[1 : rows + 1, :, 1 : h + 1] + across[2 : rows + 2, :, 2 : h + 2]


def paste(weights):
    """Adjoint of box_sum: [R, C, h, w] -> [R + 2, C + 2, h, w] (keys outside the level dropped)."""
    rows, cols, h, w = weights.shape
    padded = F.pad(weights, (1, 1, 1, 1, 2, 2, 2, 2))
    across = padded[:, 0 : cols + 2, :, 0:w] + padded[:, 1 : cols + 3, :, 1 : w + 1]
    across = across + padded[:, 2 : cols + 4, :, 2 : w + 2]
    return across[0 : rows + 2, :, 0:h] + across[1 : rows + 3, :, 1 : h + 1] + across[2 : rows + 4, :, 2 : h + 2]


def tile_forward(pixels, rows: int, cols: int, key_maps, inverse_norms, value_pixels):
    """pixels [(rows + 2)(cols + 2), Cq]; per level key_maps [Cq, (h + 2)(w + 2)], inverse_norms [h, w],
    value_pixels [h w, Cv] -> (the window's pasted values [(rows + 2)(cols + 2), Cv], lse [rows, cols])."""
    scores = []
    for keys, inverse in zip(key_maps, inverse_norms):
        h, w = inverse.shape
        gram = torch.mm(pixels, keys).view(rows + 2, cols + 2, h + 2, w + 2)
        scores.append((box_sum(gram) * inverse).reshape(rows, cols, h * w))
    s = torch.cat(scores, dim=2)
    top = s.amax(dim=2, keepdim=True)
    e = torch.exp(s - top)
    total = e.sum(dim=2, keepdim=True)
    p = e / total
    out, offset = None, 0
    for inverse, values in zip(inverse_norms, value_pixels):
        h, w = inverse.shape
        level = p[:, :, offset : offset + h * w].reshape(rows, cols, h, w)
        offset += h * w
        term = torch.mm(paste(level).reshape((rows + 2) * (cols + 2), h * w), values)
        out = term if out is None else out + term
    return out, (top + total.log()).squeeze(2)


def forward(query, keys, values, tile_fn, tile: int):
    batch, cq, height, width = query.shape
    cv = values[0].shape[1]
    out = query.new_zeros(batch, height + 2, width + 2, cv)
    for b in range(batch):
        key_maps = [F.pad(k[b], (1, 1, 1, 1)).reshape(cq, -1) for k in keys]
        inverse = [SCALE / torch_tiled._patch_norms(k[b], 3).clamp_min(EPS) for k in keys]
        value_pixels = [v[b].reshape(cv, -1).t().contiguous() for v in values]
        padded = F.pad(query[b], (1, 1, 1, 1))
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
                rows, cols = min(tile, height - y0), min(tile, width - x0)
                pixels = padded[:, y0 : y0 + rows + 2, x0 : x0 + cols + 2].reshape(cq, -1).t()
                pasted, _ = tile_fn(pixels, rows, cols, key_maps, inverse, value_pixels)
                out[b, y0 : y0 + rows + 2, x0 : x0 + cols + 2] += pasted.view(rows + 2, cols + 2, cv)
    return out[:, 1 : height + 1, 1 : width + 1].permute(0, 3, 1, 2) / DIVISOR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96])
    parser.add_argument("--tile", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = 64  # one graph per tile shape and level sizes
    compiled = {
        "static": torch.compile(tile_forward, dynamic=False),
        "dynamic": torch.compile(tile_forward, dynamic=True),
    }
    query, keys, values = make_inputs(1, 16, 32, (23, 23), pyramid_sizes(23, 23), dtype=torch.float64)
    want = pyramid_attention_reference(query, keys, values)
    for name, fn in compiled.items():
        error = (forward(query, keys, values, fn, 7) - want).abs().max().item()
        print(f"{name}: float64 error against the reference {error:.1e}")
    options = dict(patch_size=3, softmax_scale=SCALE, key_eps=EPS, fold_divisor=DIVISOR)
    with torch.no_grad():
        for size in args.sizes:
            query, keys, values = make_inputs(1, 16, 32, (size, size), pyramid_sizes(size, size))
            opts = dict(options, tile_bytes=torch_tiled.DEFAULT_TILE_BYTES)
            line = [f"threads {args.threads} size {size} tile {args.tile}"]
            base = seconds(partial(torch_tiled.forward, query, keys, values, **opts), 3)
            line.append(f"torch path {base * 1e3:.0f} ms")
            for name, fn in (("eager tile", tile_forward), *compiled.items()):
                t0 = time.perf_counter()
                forward(query, keys, values, fn, args.tile)
                first = time.perf_counter() - t0
                t = seconds(partial(forward, query, keys, values, fn, args.tile), 3)
                line.append(f"{name} {t * 1e3:.0f} ms (x{base / t:.2f}; first call {first:.1f} s)")
            print(", ".join(line), flush=True)


if __name__ == "__main__":
    main()
