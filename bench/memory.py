"""Memory of the benchmark cases: a model to skip cases that cannot fit, and the measurement.

CPU cases are measured in a fresh child process each (this file run as a script: ``python
memory.py SPEC``), as the peak resident memory of one call above the memory before it; CUDA
cases in the same process with the caching allocator's counters.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace

import torch
from harness import DTYPES, WARMUP_SIZE, Case, build_runner, query_key_pairs, sdpa_kernel

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
    cfg = case.op_config
    patches = (n_q + 2 * n_k) * (cfg.d_qk + cfg.d_v) * elem * (2 if case.backward else 1)
    mode = None
    if case.impl == "reference":
        mode = "reference"
    elif case.impl in ("sdpa", "sdpa_pad"):
        mode = "math" if sdpa_kernel(case) in ("math", "unknown") else None
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


def child_main(spec_json: str) -> None:
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
    try:
        proc = subprocess.run(
            [sys.executable, __file__, json.dumps(spec)], capture_output=True, text=True, timeout=timeout
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


if __name__ == "__main__":
    child_main(sys.argv[1])
