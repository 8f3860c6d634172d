"""Where the torch path's time goes: torch.profiler of its forward and backward, one thread,
the tiny configuration (Cq 16, Cv 32, five levels), 48 px, batch 1.

    python bench/experiments/fused_cpu/profile_torch_path.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from op_inputs import make_inputs, pyramid_sizes  # noqa: E402

from tri_panet.ops import torch_tiled  # noqa: E402

OPTIONS = dict(
    patch_size=3, softmax_scale=10.0, key_eps=1e-4, fold_divisor=4.0, tile_bytes=torch_tiled.DEFAULT_TILE_BYTES
)

if __name__ == "__main__":
    torch.set_num_threads(1)
    query, keys, values = make_inputs(1, 16, 32, (48, 48), pyramid_sizes(48, 48))
    grad_out = torch.randn(1, 32, 48, 48)
    with torch.no_grad():
        _, lse = torch_tiled.forward(query, keys, values, **OPTIONS)
        for name, run in (
            ("forward", lambda: torch_tiled.forward(query, keys, values, **OPTIONS)),
            ("backward", lambda: torch_tiled.backward(grad_out, query, keys, values, lse, **OPTIONS)),
        ):
            with torch.profiler.profile() as prof:
                for _ in range(3):
                    run()
            print(name)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
