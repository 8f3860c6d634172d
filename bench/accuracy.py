"""Errors of the benchmark cases against a float64 oracle (the report's error columns)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from harness import Case, build_runner
from memory import estimated_peak_bytes

from tri_panet.ops import tile_budget

#: The torch path's tile budget for the oracle on a GPU: the CPU-tuned default makes few-query
#: tiles there, a launch-bound Python loop.
CUDA_ORACLE_TILE_BYTES = 2**30


def oracle(kind: str, size: int, backward: bool, device: str, budget_bytes: int, seed: int = 0, config: str = "panet"):
    """(results, label): what ``build_runner`` returns for the case, computed in float64
    from the float32 inputs. By the naive reference where its estimated memory fits
    ``budget_bytes``, else by the torch backend (tested against the reference)."""
    for impl in ("reference", "torch"):
        case = Case(impl, kind, size, "float64", backward, device, config)
        if impl == "torch" or estimated_peak_bytes(case) <= budget_bytes:
            break
    cuda = device.startswith("cuda")
    with tile_budget(CUDA_ORACLE_TILE_BYTES) if cuda else contextlib.nullcontext():
        results = [t.detach() for t in build_runner(case, seed)()]
    return results, f"{impl} float64"


def max_errors(results: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(max abs error, that divided by the reference's max abs value) over all tensors."""
    err = max(float((r.double() - o.double()).abs().max()) for r, o in zip(results, reference))
    scale = max(float(o.abs().max()) for o in reference)
    return err, err / scale if scale > 0 else math.inf
