"""Benchmarks of pyramid attention implementations in the PANet configuration.

One module holds everything the benchmarks share, so that each idea is written once:

- the cases: PANet's block (C = 64 -> query/key channels 32, value channels 64, five
  bicubic levels at scales 1.0 ... 0.6, patch 3: d_qk = 288, d_v = 576, 1728 FLOPs per
  query-key pair forward) on one square image, as the functional op or the whole block;
- the implementations compared: ``reference`` (naive, materialises the scores), ``torch``
  (tiled, memory-efficient), ``sdpa`` (what a PyTorch user would write: unfold, normalise
  keys, ``F.scaled_dot_product_attention``, fold), ``sdpa_pad`` (the same with queries
  and keys zero-padded to the value width, which lets fused SDPA kernels that require
  equal widths run) and ``triton`` (CUDA only);
- the report behind ``bench/report.py`` and ``tri_panet bench``: time, peak extra memory
  (measured per case in a child process on CPU), GFLOP/s, share of the machine's matmul
  throughput measured in the same run, and the error against a float64 oracle.

``bench/test_bench_op.py`` (pytest-benchmark) builds its cases from here too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import importlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from . import torch_backend
from ._files import write_text_atomic
from .functional import available_backends, pyramid_attention, register_backend
from .nn import DEFAULT_SCALES, PyramidAttention, build_pyramid
from .patches import extract_patches, paste_patches

# ---------------------------------------------------------------------------------------
# The PANet configuration
# ---------------------------------------------------------------------------------------

CHANNELS = 64  #: block input channels (= value channels)
REDUCTION = 2  #: query/key channels = CHANNELS // REDUCTION
PATCH_SIZE = 3
SCALES = DEFAULT_SCALES
OP_OPTIONS = dict(patch_size=PATCH_SIZE, softmax_scale=10.0, key_eps=1e-4, fold_divisor=4.0)

D_QK = CHANNELS // REDUCTION * PATCH_SIZE**2  # 288
D_V = CHANNELS * PATCH_SIZE**2  # 576
#: Forward FLOPs per (query, key) pair: one d_qk dot product and one d_v weighted sum.
FLOPS_PER_PAIR = 2 * D_QK + 2 * D_V  # 1728
#: Backward FLOPs per forward FLOP (the FlashAttention convention): fwd+bwd counts 3.5x.
BACKWARD_FLOP_FACTOR = 2.5

IMPLEMENTATIONS = ("reference", "torch", "sdpa", "sdpa_pad", "triton")
KINDS = ("op", "block")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
DEFAULT_SIZES = {"cpu": (32, 48, 64, 96), "cuda": (64, 96, 128, 256, 512)}
DEFAULT_DTYPES = {"cpu": ("float32",), "cuda": ("bfloat16", "float32")}
DEFAULT_MATMUL_SIZE = {"cpu": 2048, "cuda": 4096}
#: Side of the tiny case every memory child runs first, so lazily loaded libraries and
#: per-thread buffers of the math kernels are not counted as the case's memory.
WARMUP_SIZE = 8
#: Names under which the SDPA alternatives are registered as backends for the block cases.
_SDPA_BACKEND_NAMES = {"sdpa": "bench_sdpa", "sdpa_pad": "bench_sdpa_pad"}


def level_sizes(size: int) -> list[tuple[int, int]]:
    """Spatial sizes of the five pyramid levels of a size x size map, exactly as the block
    computes them (``build_pyramid`` run on a shape-only "meta" tensor)."""
    x = torch.empty(1, 1, size, size, device="meta")
    return [tuple(level.shape[2:]) for level in build_pyramid(x, SCALES)]


def query_key_pairs(size: int) -> tuple[int, int]:
    """(queries, keys) of one size x size image: H*W and the sum of H_l*W_l over levels."""
    return size * size, sum(h * w for h, w in level_sizes(size))


def case_flops(size: int, backward: bool) -> float:
    """FLOPs of one call: 1728 per query-key pair forward, 3.5x that for forward+backward.

    The block's 1x1 convolutions and bicubic resampling are not counted (under 1 % of the
    attention's FLOPs at 32 px, less above)."""
    n_q, n_k = query_key_pairs(size)
    return n_q * n_k * FLOPS_PER_PAIR * (1 + BACKWARD_FLOP_FACTOR if backward else 1)


# ---------------------------------------------------------------------------------------
# The PyTorch alternative: unfold + scaled_dot_product_attention + fold
# ---------------------------------------------------------------------------------------


def pyramid_attention_sdpa(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    patch_size: int = 3,
    softmax_scale: float = 10.0,
    key_eps: float = 1e-4,
    fold_divisor: float = 4.0,
    pad_qk: bool = False,
) -> torch.Tensor:
    """Pyramid attention the way a PyTorch user would write it with SDPA (same contract as
    the reference): unfold patches, normalise key patches, one
    ``F.scaled_dot_product_attention`` over the concatenated keys of all levels, fold and
    divide. query [B, Cq, H, W], keys[l] [B, Cq, H_l, W_l], values[l] [B, Cv, H_l, W_l]
    -> [B, Cv, H, W].

    ``pad_qk=True`` zero-pads query and key patches to the value width: dot products are
    unchanged, but SDPA kernels that need equal widths (the CPU flash kernel) can then run
    instead of the math fallback, which materialises the [queries, keys] scores.
    """
    height, width = query.shape[2:]
    q = extract_patches(query, patch_size)  # [B, H*W, Cq*k*k]
    k = torch.cat([extract_patches(x, patch_size) for x in keys], dim=1)  # [B, keys, Cq*k*k]
    v = torch.cat([extract_patches(x, patch_size) for x in values], dim=1)  # [B, keys, Cv*k*k]
    k = k / torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(key_eps)
    if pad_qk and v.shape[-1] > q.shape[-1]:
        q = F.pad(q, (0, v.shape[-1] - q.shape[-1]))
        k = F.pad(k, (0, v.shape[-1] - k.shape[-1]))
    # One head per image: [B, 1, tokens, width].
    out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=softmax_scale)[:, 0]
    return paste_patches(out, (height, width), patch_size) / fold_divisor


def sdpa_kernel_name(size: int, dtype: torch.dtype, device: str, backward: bool, pad_qk: bool) -> str:
    """Which SDPA kernel torch dispatches to for this case (e.g. "math", "flash_attention",
    "efficient_attention"), asked of torch's own selector on tiny tensors of the same
    widths; "unknown" where this torch has no such selector."""
    d_qk = D_V if pad_qk else D_QK
    n_q, n_k = 64, 80
    q = torch.zeros(1, 1, n_q, d_qk, dtype=dtype, device=device, requires_grad=backward)
    k = torch.zeros(1, 1, n_k, d_qk, dtype=dtype, device=device, requires_grad=backward)
    v = torch.zeros(1, 1, n_k, D_V, dtype=dtype, device=device, requires_grad=backward)
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend(torch._fused_sdp_choice(q, k, v, scale=10.0)).name.lower()
    except Exception:  # private API: absent or changed in other torch versions
        return "unknown"


# ---------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One benchmark case: ``impl`` on ``kind`` ("op" or "block") at ``size`` x ``size``
    pixels, one image, inputs of ``dtype`` on ``device``, forward or forward+backward."""

    impl: str
    kind: str
    size: int
    dtype: str = "float32"
    backward: bool = False
    device: str = "cpu"

    @property
    def pass_name(self) -> str:
        return "fwd+bwd" if self.backward else "fwd"

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.impl}-{self.size}px-{self.dtype}-{self.pass_name}-{self.device}"


def triton_available(device: str) -> bool:
    """True when the "triton" backend is registered and ``device`` is a usable CUDA device."""
    if device != "cuda" or not torch.cuda.is_available():
        return False
    with contextlib.suppress(ImportError):
        importlib.import_module("tri_panet.triton_backend")
    return "triton" in available_backends()


def _ensure_sdpa_backends() -> None:
    """Register the SDPA alternatives as backends so that the block can run them.

    Done only on demand (block cases), under names no library backend uses."""
    for impl, name in _SDPA_BACKEND_NAMES.items():
        if name not in available_backends():
            register_backend(name, functools.partial(pyramid_attention_sdpa, pad_qk=impl == "sdpa_pad"))


def op_function(impl: str) -> Callable[..., torch.Tensor]:
    """The functional op of ``impl`` (signature of ``pyramid_attention`` without backend)."""
    if impl in ("sdpa", "sdpa_pad"):
        return functools.partial(pyramid_attention_sdpa, pad_qk=impl == "sdpa_pad")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    return functools.partial(pyramid_attention, backend=impl)


def make_block(impl: str, seed: int = 0) -> PyramidAttention:
    """The PANet block (channels 64, reduction 2, 5 levels) running ``impl``; its weights
    depend on ``seed`` only (default init drawn under a private RNG state)."""
    if impl in _SDPA_BACKEND_NAMES:
        _ensure_sdpa_backends()
        backend = _SDPA_BACKEND_NAMES[impl]
    elif impl in IMPLEMENTATIONS:
        backend = impl
    else:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PyramidAttention(CHANNELS, REDUCTION, SCALES, PATCH_SIZE, backend=backend)


def block_input(size: int, seed: int = 0) -> torch.Tensor:
    """The block's input: N(0, 1) features [1, 64, size, size], float32 on the CPU."""
    return torch.randn(1, CHANNELS, size, size, generator=torch.Generator().manual_seed(seed))


def op_inputs(size: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(query [1, 32, S, S], keys, values) of the op: the block's own embeddings of
    ``block_input(size, seed)`` (so scores have PANet's realistic spread), float32, CPU."""
    block = make_block("torch", seed)
    x = block_input(size, seed)
    with torch.no_grad():
        pyramid = build_pyramid(x, SCALES)
        return (
            block.conv_match_L_base(x),
            [block.conv_match(level) for level in pyramid],
            [block.conv_assembly(level) for level in pyramid],
        )


def output_gradient(size: int, seed: int = 1) -> torch.Tensor:
    """The upstream gradient of fwd+bwd cases: N(0, 1), [1, 64, size, size], float32, CPU."""
    return torch.randn(1, CHANNELS, size, size, generator=torch.Generator().manual_seed(seed))


def build_runner(case: Case, seed: int = 0) -> Callable[[], list[torch.Tensor]]:
    """A closure that runs ``case`` once and returns what it computed: the output (fwd), or
    the gradients of the inputs (fwd+bwd: op -> query, keys..., values...; block -> x).

    Inputs, weights and the upstream gradient are created here, once, so the closure
    times only the computation. Forward runs under ``torch.no_grad`` (inference).
    """
    dtype, device = DTYPES[case.dtype], torch.device(case.device)
    if case.kind == "op":
        query, keys, values = op_inputs(case.size, seed)
        query = query.to(device, dtype).requires_grad_(case.backward)
        keys = [k.to(device, dtype).requires_grad_(case.backward) for k in keys]
        values = [v.to(device, dtype).requires_grad_(case.backward) for v in values]
        fn = op_function(case.impl)
        leaves = [query, *keys, *values]
        params: list[torch.Tensor] = []

        def forward() -> torch.Tensor:
            return fn(query, keys, values, **OP_OPTIONS)

    elif case.kind == "block":
        block = make_block(case.impl, seed).to(device, dtype)
        x = block_input(case.size, seed).to(device, dtype).requires_grad_(case.backward)
        leaves, params = [x], list(block.parameters())
        block.requires_grad_(case.backward)

        def forward() -> torch.Tensor:
            return block(x)

    else:
        raise ValueError(f"kind must be one of {KINDS}, got {case.kind!r}")

    if not case.backward:

        def run() -> list[torch.Tensor]:
            with torch.no_grad():
                return [forward()]

        return run

    grad_out = output_gradient(case.size).to(device, dtype)

    def run_backward() -> list[torch.Tensor]:
        for t in leaves + params:
            t.grad = None
        forward().backward(grad_out)
        return [t.grad for t in leaves]

    return run_backward


# ---------------------------------------------------------------------------------------
# Memory model (to skip cases that cannot fit) and measurement
# ---------------------------------------------------------------------------------------

#: Peak extra memory in units of one float32 [queries, keys] score matrix, measured with
#: ``measure_case_memory`` on CPU for the op and the block at 64 px (reference 3.4 / 3.7,
#: SDPA math 2.7 / 3.6 for fwd / fwd+bwd; fixed costs add more below 64 px), rounded up.
#: Used only to skip cases that would not fit the memory budget.
_SCORE_BUFFERS = {("reference", False): 3.5, ("reference", True): 3.8, ("math", False): 2.8, ("math", True): 3.8}


def estimated_peak_bytes(case: Case) -> int:
    """Rough peak extra memory of ``case``: the score-matrix terms of the implementations
    that materialise scores (the reference; SDPA when torch falls back to its math kernel)
    plus the patch matrices every implementation forms; meant to skip impossible cases."""
    n_q, n_k = query_key_pairs(case.size)
    dtype = DTYPES[case.dtype]
    elem = 8 if dtype == torch.float64 else 4  # the reference and SDPA-math softmax in >= fp32
    patches = (n_q + 2 * n_k) * (D_QK + D_V) * elem * (2 if case.backward else 1)
    mode = None
    if case.impl == "reference":
        mode = "reference"
    elif case.impl in ("sdpa", "sdpa_pad"):
        kernel = sdpa_kernel_name(case.size, dtype, case.device, case.backward, case.impl == "sdpa_pad")
        mode = "math" if kernel in ("math", "unknown") else None
    if mode is None:
        return int(patches)
    return int(patches + _SCORE_BUFFERS[(mode, case.backward)] * n_q * n_k * elem)


def _proc_status_kib(field: str) -> int:
    """A ``VmXXX`` field of /proc/self/status in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def measure_peak_rss(fn: Callable[[], object]) -> tuple[int, str]:
    """(peak resident bytes above the RSS before the call, method) while ``fn()`` runs.

    Linux: writing "5" to /proc/self/clear_refs resets the peak RSS (VmHWM) to the
    current RSS, so VmHWM after the call minus VmRSS before it is exact. Where that is
    not allowed, a thread samples VmRSS every 0.5 ms (can miss very short peaks).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_kib("VmRSS")
        result = fn()
        peak = _proc_status_kib("VmHWM")
        del result
        return (peak - before) * 1024, "VmHWM reset"
    except OSError:
        pass
    before = _proc_status_kib("VmRSS")
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _proc_status_kib("VmRSS"))
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
        peak[0] = max(peak[0], _proc_status_kib("VmRSS"))
        del result
    finally:
        done.set()
        sampler.join()
    return (peak[0] - before) * 1024, "VmRSS sampled"


def _child_main(spec_json: str) -> None:
    """Entry of the memory child: run one case once, print {"peak_bytes", "method"}."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    case = Case(**spec["case"])
    build_runner(replace(case, size=WARMUP_SIZE))()  # load lazy libraries, warm thread pools
    run = build_runner(case)
    gc.collect()
    peak, method = measure_peak_rss(run)
    print(json.dumps({"peak_bytes": peak, "method": method}), flush=True)


def measure_case_memory(case: Case, threads: int | None = None, timeout: float = 3600.0) -> dict:
    """Peak extra memory of one run of ``case``, measured in a fresh child process.

    CPU: the child imports everything, runs a tiny warm-up case, creates the inputs, then
    measures the RSS peak of one call above the RSS before it (``measure_peak_rss``).
    Returns {"peak_bytes": int, "method": str} or {"error": str}.
    """
    spec = {"case": asdict(case), "threads": threads or torch.get_num_threads()}
    code = "import sys; from tri_panet.benchmarking import _child_main; _child_main(sys.argv[1])"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"memory child timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit {proc.returncode}"
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        return {"error": f"memory child {why}: {tail[0][:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_cuda_memory(run: Callable[[], object], device: torch.device) -> dict:
    """Peak extra CUDA memory of one ``run()``: max_memory_allocated minus allocated before."""
    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = run()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return {"peak_bytes": int(peak), "method": "max_memory_allocated"}


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


#: A case whose warm-up call takes longer than this many seconds is timed once only.
LONG_CALL_SECONDS = 10.0


def time_runs(
    run: Callable[[], object], device: str, min_repeats: int = 3, min_time: float = 1.0, max_repeats: int = 50
) -> tuple[list[float], object]:
    """(seconds of each timed call, result of the last call) of ``run`` after one warm-up
    call: at least ``min_repeats`` calls (1 when the warm-up took over LONG_CALL_SECONDS),
    more until ``min_time`` seconds are spent (at most ``max_repeats``)."""
    start = time.perf_counter()
    result = run()
    _synchronize(device)
    if time.perf_counter() - start > LONG_CALL_SECONDS:
        min_repeats = 1
    times: list[float] = []
    while len(times) < min_repeats or (sum(times) < min_time and len(times) < max_repeats):
        del result  # free the previous output before the next call
        start = time.perf_counter()
        result = run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times, result


def matmul_flops(dtype: torch.dtype, n: int, device: str, min_repeats: int = 5, min_time: float = 1.0) -> float:
    """FLOP/s of ``torch.matmul`` on two n x n matrices of ``dtype`` (median of repeats)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    times, _ = time_runs(lambda: a @ b, device, min_repeats, min_time)
    return 2 * n**3 / statistics.median(times)


# ---------------------------------------------------------------------------------------
# Errors against a float64 oracle
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_tile_bytes(tile_bytes: int):
    """Temporarily let the torch backend use larger query tiles (the float64 oracle on a
    GPU: the default budget makes few-row tiles, so a launch-bound Python loop)."""
    saved = torch_backend.DEFAULT_TILE_BYTES
    torch_backend.DEFAULT_TILE_BYTES = tile_bytes
    try:
        yield
    finally:
        torch_backend.DEFAULT_TILE_BYTES = saved


def oracle(kind: str, size: int, backward: bool, device: str, budget_bytes: int, seed: int = 0):
    """(results, label): what ``build_runner`` returns for the case, computed in float64
    from the float32 inputs. By the naive reference where its estimated memory fits
    ``budget_bytes``, else by the torch backend (tested against the reference)."""
    for impl in ("reference", "torch"):
        case = Case(impl, kind, size, "float64", backward, device)
        if impl == "torch" or estimated_peak_bytes(case) <= budget_bytes:
            break
    tile = 2**30 if device.startswith("cuda") else torch_backend.DEFAULT_TILE_BYTES
    with _torch_tile_bytes(tile):
        results = [t.detach() for t in build_runner(case, seed)()]
    return results, f"{impl} float64"


def max_errors(results: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(max abs error, that divided by the reference's max abs value) over all tensors."""
    err = max(float((r.double() - o.double()).abs().max()) for r, o in zip(results, reference))
    scale = max(float(o.abs().max()) for o in reference)
    return err, err / scale if scale > 0 else math.inf


# ---------------------------------------------------------------------------------------
# Device description and output files
# ---------------------------------------------------------------------------------------


def device_description(device: str) -> str:
    """Human description: CPU model and cores, or GPU name and memory."""
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})"
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({usable} usable logical CPUs of {os.cpu_count()}, torch threads {torch.get_num_threads()})"


def device_slug(device: str) -> str:
    """File-name-safe device name: "amd-epyc", "nvidia-h100-80gb-hbm3", ..."""
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    if name is None:
        name = device_description(device).split(" (")[0]
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or device


def default_results_dir() -> Path:
    """bench/results of the source tree this package lives in, else ./bench/results."""
    root = Path(__file__).resolve().parents[1]
    return (root if (root / "bench").is_dir() else Path.cwd()) / "bench" / "results"




# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/report.py",
        description="Benchmark pyramid attention implementations (PANet config, one image) and print one table.",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides in px (cpu: 32 48 64 96)")
    p.add_argument("--dtype", nargs="+", choices=tuple(DTYPES), default=None, help="cpu: float32; cuda: bf16 fp32")
    p.add_argument("--backward", action="store_true", help="also time forward+backward")
    p.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS, default=None, help="default: all available")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="functional op and/or block")
    p.add_argument("--repeats", type=int, default=3, help="minimum timed runs per case (after 1 warm-up)")
    p.add_argument("--min-time", type=float, default=1.0, help="keep repeating until this many seconds (max 50 runs)")
    p.add_argument("--mem-budget-gb", type=float, default=None, help="skip cases estimated above (cpu 6, cuda 80%%)")
    p.add_argument("--matmul-size", type=int, default=None, help="n of the n^3 matmul (cpu 2048, cuda 4096)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--no-errors", action="store_true", help="skip the error against the float64 oracle")
    p.add_argument(
        "--out",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="also write the report to FILE (and FILE.json); without FILE: "
        "bench/results/<device>_<date>.txt. Existing files are never overwritten.",
    )
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    for name in ("sizes", "dtype", "matmul_size"):
        if getattr(args, name) is None:
            setattr(args, name, {"sizes": DEFAULT_SIZES, "dtype": DEFAULT_DTYPES, "matmul_size": DEFAULT_MATMUL_SIZE}[
                name][args.device])
    if min(args.sizes) < WARMUP_SIZE:
        p.error(f"--sizes must be >= {WARMUP_SIZE} (the smallest pyramid level must be at least 1 px)")
    if args.mem_budget_gb is None:
        args.mem_budget_gb = 6.0 if args.device == "cpu" else 0.8 * torch.cuda.get_device_properties(0).total_memory / 1e9
    if args.impls is None:
        args.impls = [i for i in IMPLEMENTATIONS if i != "triton" or triton_available(args.device)]
    return args


def _output_path(args: argparse.Namespace, stamp: str) -> Path | None:
    if args.out is None:
        return None
    path = Path(args.out) if args.out else default_results_dir() / f"{device_slug(args.device)}_{stamp}.txt"
    for p in (path, path.with_suffix(".json")):
        if p.exists():
            raise FileExistsError(f"--out: {p} exists; choose another name (results are never overwritten)")
    return path


def run_report(args: argparse.Namespace, log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> tuple[str, dict]:
    """Run every case of ``args``; returns (report text, raw results as a dict)."""
    saved_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run_report(args, log)
    finally:
        torch.set_num_threads(saved_threads)


def _run_report(args: argparse.Namespace, log) -> tuple[str, dict]:
    device, budget = args.device, int(args.mem_budget_gb * 1e9)
    now = datetime.datetime.now(datetime.timezone.utc)

    matmul = {}
    for name in dict.fromkeys(["float32", *args.dtype]):
        log(f"matmul {name} {args.matmul_size}^3 ...")
        matmul[name] = matmul_flops(DTYPES[name], args.matmul_size, device, max(args.repeats, 3), args.min_time)

    rows = []
    for size in args.sizes:
        for backward in (False, True) if args.backward else (False,):
            for kind in args.kinds:
                truth = None
                if not args.no_errors:
                    log(f"oracle {kind} {size}px {'fwd+bwd' if backward else 'fwd'} ...")
                    truth = oracle(kind, size, backward, device, budget)
                for dtype_name in args.dtype:
                    for impl in args.impls:
                        case = Case(impl, kind, size, dtype_name, backward, device)
                        log(f"case {case.name} ...")
                        rows.append(_run_case(case, args, budget, truth, matmul[dtype_name]))
                truth = None
                gc.collect()

    text = _format_report(args, rows, matmul, now)
    raw = {
        "date": now.isoformat(),
        "device": device_description(device),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "matmul_flops": matmul,
        "matmul_size": args.matmul_size,
        "command": _command_line(),
        "rows": rows,
    }
    return text, raw


def _run_case(case: Case, args: argparse.Namespace, budget: int, truth, matmul: float) -> dict:
    row = {"case": asdict(case), "flops": case_flops(case.size, case.backward), "note": ""}
    if case.impl == "triton" and not triton_available(case.device):
        row["note"] = "skipped: triton backend needs CUDA and a registered 'triton' backend"
        return row
    estimate = estimated_peak_bytes(case)
    if estimate > budget:
        row["note"] = f"skipped: needs ~{estimate / 1e9:.1f} GB > budget {budget / 1e9:.1f} GB"
        return row
    if case.impl in ("sdpa", "sdpa_pad"):
        row["note"] = "sdpa kernel: " + sdpa_kernel_name(
            case.size, DTYPES[case.dtype], case.device, case.backward, case.impl == "sdpa_pad"
        )
    if not args.no_memory and case.device == "cpu":
        mem = measure_case_memory(case, args.threads)
        if "error" in mem:
            row["note"] = mem["error"]
            return row
        row["peak_bytes"], row["memory_method"] = mem["peak_bytes"], mem["method"]
    try:
        run = build_runner(case)
        times, results = time_runs(run, case.device, args.repeats, args.min_time)
        row["times"] = times
        row["time"] = statistics.median(times)
        row["flop_rate"] = row["flops"] / row["time"]
        row["matmul_share"] = row["flop_rate"] / matmul
        if truth is not None:
            row["max_abs_err"], row["rel_err"] = max_errors(results, truth[0])
            row["oracle"] = truth[1]
        del results
        if not args.no_memory and case.device.startswith("cuda"):
            mem = measure_cuda_memory(run, torch.device(case.device))
            row["peak_bytes"], row["memory_method"] = mem["peak_bytes"], mem["method"]
        del run
    except (RuntimeError, MemoryError) as exc:  # e.g. CUDA out of memory: report, go on
        row["note"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    if case.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def _triton_version() -> str:
    try:
        return importlib.import_module("triton").__version__
    except ImportError:
        return "not installed"


def _command_line() -> str:
    return " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])


def _format_report(args: argparse.Namespace, rows: list[dict], matmul: dict, now: datetime.datetime) -> str:
    cuda = args.device.startswith("cuda")
    unit, scale = ("TFLOP/s", 1e12) if cuda else ("GFLOP/s", 1e9)
    lines = [
        f"tri_panet pyramid attention benchmark, {now:%Y-%m-%d %H:%M} UTC",
        f"device: {args.device}: {device_description(args.device)}",
        f"torch {torch.__version__}, triton {_triton_version()}, python {platform.python_version()}"
        + (f", tf32 matmul allowed: {torch.backends.cuda.matmul.allow_tf32}" if cuda else ""),
        f"command: {_command_line()}",
        f"config: PANet block, C={CHANNELS} -> Cq={CHANNELS // REDUCTION}, Cv={CHANNELS}; scales "
        f"{', '.join(f'{s:g}' for s in SCALES)}; patch {PATCH_SIZE}; d_qk={D_QK}, d_v={D_V}; one image",
        "machine matmul (torch.matmul, "
        f"{args.matmul_size}x{args.matmul_size}x{args.matmul_size}, median): "
        + ", ".join(f"{name} {rate / scale:.1f} {unit}" for name, rate in matmul.items()),
        "",
    ]
    header = ("kind", "impl", "size", "dtype", "pass", "time ms", "peak MiB", unit, "% mm", "max abs err", "rel err", "note")
    table = [header]
    for row in rows:
        c = row["case"]
        peak = row.get("peak_bytes")
        table.append(
            (
                c["kind"],
                c["impl"],
                str(c["size"]),
                c["dtype"],
                "fwd+bwd" if c["backward"] else "fwd",
                _fmt(row.get("time") and row["time"] * 1e3, ".1f"),
                _fmt(peak and peak / 2**20, ".1f") if peak is not None else "-",
                _fmt(row.get("flop_rate") and row["flop_rate"] / scale, ".1f"),
                _fmt(row.get("matmul_share") and 100 * row["matmul_share"], ".0f"),
                _fmt(row.get("max_abs_err"), ".2e"),
                _fmt(row.get("rel_err"), ".1e"),
                row["note"],
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    right = {2, 5, 6, 7, 8, 9, 10}
    for i, r in enumerate(table):
        cells = [cell.rjust(w) if j in right else cell.ljust(w) for j, (cell, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))

    methods = sorted({row["memory_method"] for row in rows if "memory_method" in row})
    oracles = sorted({row["oracle"] for row in rows if "oracle" in row})
    pair_info = "; ".join(
        "{0} px: {1} x {2} = {3:.3g} M".format(s, *query_key_pairs(s), math.prod(query_key_pairs(s)) / 1e6)
        for s in args.sizes
    )
    lines += [
        "",
        f"time: median of >= {args.repeats} runs (more until {args.min_time:g} s; 1 run when the warm-up took "
        f"> {LONG_CALL_SECONDS:g} s) after one warm-up; "
        "fwd runs under torch.no_grad, fwd+bwd = forward + backward of a fixed random output gradient.",
        f"{unit}: {FLOPS_PER_PAIR} FLOP per query-key pair forward (2*d_qk + 2*d_v), fwd+bwd counted "
        f"{1 + BACKWARD_FLOP_FACTOR:g}x (backward = {BACKWARD_FLOP_FACTOR:g}x forward, FlashAttention convention); "
        "block rows count the attention only (1x1 convs and resampling add < 1 %).",
        f"queries x keys: {pair_info}.",
        "% mm: share of the torch.matmul FLOP/s above of the row's dtype.",
    ]
    if args.no_memory:
        lines.append("peak MiB: not measured (--no-memory).")
    elif cuda:
        lines.append(
            "peak MiB: torch.cuda.max_memory_allocated during one call minus memory_allocated before it "
            "(inputs, weights and output gradient already allocated; output and gradients counted)."
        )
    else:
        lines.append(
            "peak MiB: extra resident memory of one call, measured in a fresh child process per case: after imports, "
            f"a tiny ({WARMUP_SIZE} px) warm-up case and input creation, the peak RSS is reset (/proc/self/clear_refs) and "
            "VmHWM after the call minus VmRSS before it is reported (output and gradients counted)"
            + (f"; method: {', '.join(methods)}." if methods else ".")
        )
    lines += [
        "max abs err: max |result - oracle| over the output (fwd) or all input gradients (fwd+bwd: op -> query, "
        "keys, values; block -> x); rel err = that / max |oracle|. Oracle computed in float64 from the same "
        "float32 inputs and weights (so low-precision rows include input rounding): "
        + (", ".join(oracles) or "none")
        + "; the naive reference where it fits the memory budget, else the torch backend. Block fwd+bwd errors can "
        "be dominated by PReLU kinks (a pre-activation within rounding of 0 takes the other slope, 1 vs 0.25), "
        "the same for every impl: the op rows show the attention's own error.",
        "inputs: the block's own (random-init, seed 0) embeddings of N(0, 1) features [1, 64, S, S]; "
        "sdpa = unfold + normalised keys + F.scaled_dot_product_attention + fold; sdpa_pad = the same with "
        "query/key patches zero-padded to d_v so fused SDPA kernels that need equal widths qualify.",
        f"memory budget for skipping: {args.mem_budget_gb:.1f} GB (estimated from the score-matrix size).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the report (``python bench/report.py``, ``tri_panet bench``): run the
    cases, print one table to stdout, and with ``--out`` write it (and raw JSON) to a file."""
    args = _parse_args(argv)
    now = datetime.datetime.now(datetime.timezone.utc)
    out = _output_path(args, f"{now:%Y%m%d-%H%M%S}")  # fail before the run, not after it
    text, raw = run_report(args)
    sys.stdout.write(text)
    sys.stdout.flush()
    if out is not None:
        write_text_atomic(out, text, overwrite=False)
        write_text_atomic(out.with_suffix(".json"), json.dumps(raw, indent=1) + "\n", overwrite=False)
        print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
