"""Child of ``against_commit.py``: times op and training-step cases with whichever ``tri_panet``
is first on ``PYTHONPATH`` (an older commit's worktree, or this one), and prints one JSON line.

    PYTHONPATH=TREE python bench/tree_timer.py SPEC.json

Self-contained on purpose: it imports nothing from bench/ and only the API every commit since
the first models has (``tri_panet.pyramid_attention``, ``tri_panet.models.create`` and
``set_backend``), so one file times both trees with identical code.

SPEC: {"threads": N, "inputs": safetensors file with query_S, key_S_l, value_S_l, grad_S per op
size S, "cases": [{"kind": "op", "size": S, "backend": B, "backward": bool, "reps": R} |
{"kind": "train_step", "model": M, "backend": B, "batch": N, "patch": P, "reps": R}]}.
Output: {"tri_panet": path of the imported package, "results": [{**case, "seconds": [R floats]}]}.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import tri_panet
from tri_panet import models

#: The op's settings in every PANet block (docs/SPEC.md).
OP_OPTIONS = dict(patch_size=3, softmax_scale=10.0, key_eps=1e-4, fold_divisor=4.0)
NOISE_SIGMA = 25 / 255  # what the denoisers train on; the cost does not depend on it


def seconds_per_call(run: Callable[[], object], reps: int) -> list[float]:
    """Seconds of each of ``reps`` calls of ``run`` after one warm-up call (which also builds
    any kernel compiled at first use)."""
    run()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def op_runner(tensors: dict[str, torch.Tensor], size: int, backend: str, backward: bool) -> Callable[[], object]:
    """One call of the op on the size-S inputs: forward under no_grad, or forward and the
    gradients of query, keys and values for the stored output gradient."""
    n_levels = sum(name.startswith(f"key_{size}_") for name in tensors)
    query = tensors[f"query_{size}"].requires_grad_(backward)
    keys = [tensors[f"key_{size}_{i}"].requires_grad_(backward) for i in range(n_levels)]
    values = [tensors[f"value_{size}_{i}"].requires_grad_(backward) for i in range(n_levels)]
    grad = tensors[f"grad_{size}"]

    def forward() -> torch.Tensor:
        return tri_panet.pyramid_attention(query, keys, values, **OP_OPTIONS, backend=backend)

    if not backward:
        return torch.no_grad()(forward)
    return lambda: torch.autograd.grad(forward(), [query, *keys, *values], grad)


def train_step_runner(model_name: str, backend: str, batch: int, patch: int) -> Callable[[], object]:
    """One optimiser step of a denoiser as the training engine takes it: zero the gradients,
    forward on noisy patches, L1 against the clean ones, backward, Adam."""
    torch.manual_seed(0)
    model = models.set_backend(models.create(model_name), backend).train()
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(batch, 3, patch, patch, generator=g)
    noisy = clean + NOISE_SIGMA * torch.randn(clean.shape, generator=g)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.l1_loss(model(noisy), clean).backward()
        optimizer.step()

    return step


def main(spec_path: str) -> None:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    tensors = load_file(spec["inputs"])
    results = []
    for case in spec["cases"]:
        if case["kind"] == "op":
            run = op_runner(tensors, case["size"], case["backend"], case["backward"])
        elif case["kind"] == "train_step":
            run = train_step_runner(case["model"], case["backend"], case["batch"], case["patch"])
        else:
            raise ValueError(f"case kind must be 'op' or 'train_step', got {case['kind']!r}")
        results.append({**case, "seconds": seconds_per_call(run, case["reps"])})
    print(json.dumps({"tri_panet": tri_panet.__file__, "results": results}))


if __name__ == "__main__":
    main(sys.argv[1])
