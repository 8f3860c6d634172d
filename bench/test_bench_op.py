"""pytest-benchmark cases: pyramid attention in the PANet configuration (one image), and
the functional op in the tiny models' configuration (Cq 16, Cv 32) at 48 and 96 px.

Implementations: naive ``reference``, tiled ``torch`` backend, fused C ``cpu_fused`` (CPU), ``sdpa`` (unfold + SDPA +
fold, what a PyTorch user would write), ``sdpa_pad`` (the same with q/k zero-padded so
SDPA's fused kernels qualify) and ``triton`` (CUDA only); as the functional op and as the
whole ``PyramidAttention`` block; forward and forward+backward. The cases themselves live
in ``harness.py`` (shared with report.py). Groups compare the
implementations at one size, dtype and pass; ``extra_info`` holds FLOPs and GFLOP/s
(1728 FLOPs per query-key pair forward, forward+backward counted 3.5x).

Run: ``pytest --benchmark-only bench/``. Environment knobs:
- TRI_PANET_BENCH_DEVICE: "cpu" (default) or "cuda";
- TRI_PANET_BENCH_SIZES: image sides in px (default "32 48 64 96");
- TRI_PANET_BENCH_DTYPES: e.g. "float32 bfloat16" (default "float32");
- TRI_PANET_BENCH_TINY_SIZES: image sides of the tiny-config op cases (default "48 96";
  empty: none);
- TRI_PANET_BENCH_BUDGET_GB: skip cases estimated to need more memory (default 6).

The tiny models' training step and restore are in ``test_bench_models.py``.
"""

import os

import harness as B
import pytest
import torch
from memory import estimated_peak_bytes

DEVICE = os.environ.get("TRI_PANET_BENCH_DEVICE", "cpu")
SIZES = [int(s) for s in os.environ.get("TRI_PANET_BENCH_SIZES", "32 48 64 96").split()]
DTYPES = os.environ.get("TRI_PANET_BENCH_DTYPES", "float32").split()
TINY_SIZES = [int(s) for s in os.environ.get("TRI_PANET_BENCH_TINY_SIZES", "48 96").split()]
BUDGET_BYTES = int(float(os.environ.get("TRI_PANET_BENCH_BUDGET_GB", "6")) * 1e9)

CASES = [
    B.Case(impl, kind, size, dtype, backward, DEVICE)
    for size in SIZES
    for backward in (False, True)
    for kind in B.KINDS
    for dtype in DTYPES
    for impl in B.IMPLEMENTATIONS
] + [
    B.Case(impl, "op", size, dtype, backward, DEVICE, config="tiny")
    for size in TINY_SIZES
    for backward in (False, True)
    for dtype in DTYPES
    for impl in B.IMPLEMENTATIONS
]


def rounds_for(case: B.Case) -> tuple[int, int]:
    """(rounds, warm-up rounds): few for big CPU cases so the run stays within minutes."""
    if case.device == "cuda":
        return 10, 2
    if case.size <= 48:
        return 5, 1
    # One call takes seconds from 64 px on (up to ~20 s at 96 px for fwd+bwd); first-call
    # overheads are negligible there. For medians of more runs use bench/report.py.
    return (2, 0) if case.size <= 64 else (1, 0)


def skip_reason(case: B.Case) -> str | None:
    """Why ``case`` cannot run here, or None."""
    if case.device == "cuda" and not torch.cuda.is_available():
        return "TRI_PANET_BENCH_DEVICE=cuda but no CUDA device is available"
    if reason := B.unavailable(case.impl, case.device):
        return reason
    estimate = estimated_peak_bytes(case)
    if estimate > BUDGET_BYTES:
        return (
            f"{case.impl} would need ~{estimate / 1e9:.1f} GB of memory "
            f"(> TRI_PANET_BENCH_BUDGET_GB={BUDGET_BYTES / 1e9:g})"
        )
    return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_pyramid_attention(benchmark, case):
    reason = skip_reason(case)
    if reason:
        pytest.skip(reason)
    run = B.build_runner(case)
    flops = B.case_flops(case.size, case.backward, case.config)
    prefix = "" if case.config == "panet" else f"{case.config} "
    benchmark.group = f"{prefix}{case.kind} {case.size}px {case.dtype} {case.pass_name}"
    benchmark.extra_info.update(flops=flops, queries_keys=B.query_key_pairs(case.size))

    def timed():
        run()
        if case.device == "cuda":
            torch.cuda.synchronize()  # time the kernels, not their launch

    rounds, warmup = rounds_for(case)
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=warmup)
    if benchmark.stats is not None:  # None when benchmarks are disabled (ran once)
        benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9
