"""The diagonal 3 x 3 box sum of the torch path (4-D strided slices) against the same sum on a flat
[window pixels, padded keys] layout (contiguous 2-D slices): ns per (query, key) pair, one thread.

    python bench/experiments/fused_cpu/flat_box_sum.py
"""

from __future__ import annotations

import time

import torch

from tri_panet.ops.torch_tiled import diagonal_box_sum


def flat_box_sum(gram: torch.Tensor, window_cols: int, key_cols: int, out: torch.Tensor) -> torch.Tensor:
    """gram [Q, L] (Q = (R + 2) x window_cols, L = (h + 2) x key_cols):
    out[u, v] = sum over a, b < 3 of gram[u + a window_cols + b, v + a key_cols + b] (the part that fits)."""
    q, n = gram.shape[0] - 2, gram.shape[1] - 2
    across = torch.add(gram[0:q, 0:n], gram[1 : 1 + q, 1 : 1 + n]).add_(gram[2 : 2 + q, 2 : 2 + n])
    q, n = q - 2 * window_cols, n - 2 * key_cols
    result = out[:q, :n]
    torch.add(across[0:q, 0:n], across[window_cols : window_cols + q, key_cols : key_cols + n], out=result)
    return result.add_(across[2 * window_cols : 2 * window_cols + q, 2 * key_cols : 2 * key_cols + n])


def seconds(fn, reps: int = 20) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


if __name__ == "__main__":
    torch.set_num_threads(1)
    for rows, cols, h, w in ((16, 16, 48, 48), (8, 8, 24, 24), (4, 4, 48, 48), (6, 6, 20, 20), (12, 12, 96, 96)):
        gram = torch.randn(rows + 2, cols + 2, h + 2, w + 2)
        out4 = torch.empty(rows, cols, h, w)
        flat = gram.view((rows + 2) * (cols + 2), (h + 2) * (w + 2))
        out2 = torch.empty_like(flat)
        got = torch.zeros_like(flat)
        part = flat_box_sum(flat, cols + 2, w + 2, out2)
        got[: part.shape[0], : part.shape[1]] = part
        want = diagonal_box_sum(gram, 3, out4)
        assert torch.allclose(got.view_as(gram)[:rows, :cols, :h, :w], want, atol=1e-4)
        pairs = rows * cols * h * w
        strided = seconds(lambda: diagonal_box_sum(gram, 3, out4)) / pairs * 1e9  # noqa: B023
        contiguous = seconds(lambda: flat_box_sum(flat, cols + 2, w + 2, out2)) / pairs * 1e9  # noqa: B023
        ratio = strided / contiguous
        print(f"tile {rows}x{cols}, level {h}x{w}: 4-D {strided:.2f}, flat {contiguous:.2f} ns/pair, ratio {ratio:.2f}")
