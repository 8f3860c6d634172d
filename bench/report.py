"""Benchmark report: one table of time, peak extra memory, GFLOP/s, share of the machine's
matmul throughput and error, for pyramid attention implementations (PANet or tiny config),
and with ``--kinds train_step restore`` a table of the tiny models' training and
restoration throughput.

    python bench/report.py [--device cpu|cuda] [--sizes 32 48 64 96] [--backward]
                           [--dtype float32 bfloat16 ...] [--config panet|tiny]
                           [--kinds op block train_step restore] [--out [FILE]]

``python bench/report.py --help`` lists every option; bench/README.md explains the columns.
The cases and runners are in ``harness.py``, memory in ``memory.py``, errors in ``accuracy.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib
import itertools
import json
import math
import os
import platform
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from accuracy import max_errors, oracle
from harness import (
    BACKWARD_FLOP_FACTOR,
    DEFAULT_DTYPES,
    DEFAULT_MATMUL_SIZE,
    DEFAULT_RESTORE_SIZE,
    DEFAULT_SIZES,
    DTYPES,
    IMPLEMENTATIONS,
    KINDS,
    LONG_CALL_SECONDS,
    MODEL_KINDS,
    OP_CONFIGS,
    WARMUP_SIZE,
    Case,
    ModelCase,
    build_model_runner,
    build_runner,
    case_flops,
    matmul_flops,
    query_key_pairs,
    sdpa_kernel,
    tiling_label,
    time_runs,
    tiny_models,
    training_defaults,
    unavailable,
)
from memory import estimated_peak_bytes, measure_case_memory, measure_cuda_memory

# ---------------------------------------------------------------------------------------
# Device description and output files
# ---------------------------------------------------------------------------------------


def _cpu_model() -> tuple[str, str]:
    """(model name, "vendor, family F model M") of the first CPU, as lscpu shows them
    (/proc/cpuinfo: "model name", "vendor_id", "cpu family", "model")."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block only
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    ids = ", ".join(
        part
        for part in (
            fields.get("vendor_id"),
            "family {} model {}".format(fields["cpu family"], fields["model"])
            if "cpu family" in fields and "model" in fields
            else None,
        )
        if part
    )
    return name, ids


def device_description(device: str) -> str:
    """Human description: CPU model (with vendor, family and model number) and cores, or
    GPU name and memory."""
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})"
    model, ids = _cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model} ({ids + '; ' if ids else ''}{usable} usable logical CPUs of {os.cpu_count()}, "
        f"torch threads {torch.get_num_threads()})"
    )


def load_average() -> str:
    """The 1 / 5 / 15 minute load averages ("unknown" where the OS has none)."""
    try:
        return "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())
    except (AttributeError, OSError):
        return "unknown"


def device_slug(device: str) -> str:
    """File-name-safe device name: "amd-epyc", "nvidia-h100-80gb-hbm3", ..."""
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    if name is None:
        name = device_description(device).split(" (")[0]
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or device


def default_results_dir() -> Path:
    """bench/results beside this script."""
    return Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/report.py",
        description="Benchmark pyramid attention implementations (PANet or tiny config, one image) and the tiny "
        "models' training step and restore; print the tables.",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides in px (cpu: 32 48 64 96)")
    p.add_argument("--dtype", nargs="+", choices=tuple(DTYPES), default=None, help="cpu: float32; cuda: bf16 fp32")
    p.add_argument("--backward", action="store_true", help="also time forward+backward")
    p.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS, default=None, help="default: all available")
    p.add_argument(
        "--kinds",
        nargs="+",
        choices=KINDS + MODEL_KINDS,
        default=list(KINDS),
        help="op / block: the attention (default: both); train_step: one optimiser step of each tiny model at "
        "its training patch and batch; restore: restore() of one image with the CLI's default tiling",
    )
    p.add_argument(
        "--config",
        choices=tuple(OP_CONFIGS),
        default="panet",
        help="op/block configuration: panet (C 64: Cq 32, Cv 64) or tiny (C 32: Cq 16, Cv 32)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="NAME",
        help="train_step/restore models (default: every registered tiny-* and fast-* model)",
    )
    p.add_argument(
        "--model-backends",
        nargs="+",
        default=["auto"],
        metavar="BACKEND",
        help="train_step/restore: time every model with each of these attention backends (default: auto)",
    )
    p.add_argument("--patch", type=int, default=None, help="train_step patch side, input px (default: TrainConfig's)")
    p.add_argument("--batch", type=int, default=None, help="train_step batch (default: TrainConfig's)")
    p.add_argument(
        "--restore-size",
        type=int,
        default=DEFAULT_RESTORE_SIZE,
        help=f"restore: side of the input image in px (default {DEFAULT_RESTORE_SIZE})",
    )
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
            setattr(
                args,
                name,
                {"sizes": DEFAULT_SIZES, "dtype": DEFAULT_DTYPES, "matmul_size": DEFAULT_MATMUL_SIZE}[name][
                    args.device
                ],
            )
    if min(args.sizes) < WARMUP_SIZE:
        p.error(f"--sizes must be >= {WARMUP_SIZE} (the smallest pyramid level must be at least 1 px)")
    if args.mem_budget_gb is None:
        gpu_bytes = 0 if args.device == "cpu" else torch.cuda.get_device_properties(0).total_memory
        args.mem_budget_gb = 6.0 if args.device == "cpu" else 0.8 * gpu_bytes / 1e9
    if args.impls is None:
        args.impls = [i for i in IMPLEMENTATIONS if unavailable(i, args.device) is None]
    default_patch, default_batch = training_defaults()
    args.patch = args.patch or default_patch
    args.batch = args.batch or default_batch
    known = tiny_models()
    if args.models is None:
        args.models = list(known)
    unknown = sorted(set(args.models) - set(known))
    if unknown:
        p.error(f"--models: {unknown} are not registered tiny models; choose from {', '.join(known)}")
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
    load_before = load_average()
    op_kinds = [k for k in args.kinds if k in KINDS]
    model_kinds = [k for k in args.kinds if k in MODEL_KINDS]

    matmul = {}
    for name in dict.fromkeys(["float32", *args.dtype]):
        log(f"matmul {name} {args.matmul_size}^3 ...")
        matmul[name] = matmul_flops(DTYPES[name], args.matmul_size, device, max(args.repeats, 3), args.min_time)

    rows = []
    for size in args.sizes if op_kinds else ():
        for backward in (False, True) if args.backward else (False,):
            for kind in op_kinds:
                truth = None
                if not args.no_errors:
                    log(f"oracle {args.config} {kind} {size}px {'fwd+bwd' if backward else 'fwd'} ...")
                    truth = oracle(kind, size, backward, device, budget, config=args.config)
                for dtype_name in args.dtype:
                    for impl in args.impls:
                        case = Case(impl, kind, size, dtype_name, backward, device, args.config)
                        log(f"case {case.name} ...")
                        rows.append(_run_case(case, args, budget, truth, matmul[dtype_name]))
                truth = None
                gc.collect()

    model_rows = []
    for kind, name, backend in itertools.product(model_kinds, args.models, args.model_backends):
        size, batch = (args.patch, args.batch) if kind == "train_step" else (args.restore_size, 1)
        case = ModelCase(name, kind, size, batch, device, backend)
        log(f"case {case.name} ...")
        model_rows.append(_run_model_case(case, args))
        gc.collect()

    load_after = load_average()
    text = _format_report(args, rows, model_rows, matmul, now, (load_before, load_after))
    raw = {
        "date": now.isoformat(),
        "device": device_description(device),
        "threads": torch.get_num_threads(),
        "load_average": {"before": load_before, "after": load_after},
        "torch": torch.__version__,
        "triton": _triton_version(),
        "matmul_flops": matmul,
        "matmul_size": args.matmul_size,
        "command": _command_line(),
        "config": args.config,
        "rows": rows,
        "model_rows": model_rows,
    }
    return text, raw


def _run_model_case(case: ModelCase, args: argparse.Namespace) -> dict:
    """Time one train_step / restore case: images/s of the step, seconds per output megapixel of restore."""
    row: dict = {"case": asdict(case), "output_pixels": case.output_pixels, "note": ""}
    try:
        run = build_model_runner(case)
        if case.kind == "restore":
            row["tiling"] = run.tiling
            row["note"] = "CLI default " + tiling_label(run.tiling)
        times, result = time_runs(run, case.device, args.repeats, args.min_time)
        del result, run
        row["times"] = times
        row["time"] = statistics.median(times)
        row["images_per_s"] = case.batch / row["time"]
        row["s_per_mpx"] = row["time"] / (case.output_pixels / 1e6)
    except (RuntimeError, MemoryError, ValueError) as exc:
        row["note"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    if case.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def _run_case(case: Case, args: argparse.Namespace, budget: int, truth, matmul: float) -> dict:
    row = {"case": asdict(case), "flops": case_flops(case.size, case.backward, case.config), "note": ""}
    if reason := unavailable(case.impl, case.device):
        row["note"] = "skipped: " + reason
        return row
    estimate = estimated_peak_bytes(case)
    if estimate > budget:
        row["note"] = f"skipped: needs ~{estimate / 1e9:.1f} GB > budget {budget / 1e9:.1f} GB"
        return row
    if case.impl in ("sdpa", "sdpa_pad"):
        row["note"] = "sdpa kernel: " + sdpa_kernel(case)
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


def _table_lines(table: list[tuple[str, ...]], right: set[int]) -> list[str]:
    """Rows of cells as aligned text: columns in ``right`` right-aligned, a rule under the header."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for i, r in enumerate(table):
        cells = [cell.rjust(w) if j in right else cell.ljust(w) for j, (cell, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _format_report(
    args: argparse.Namespace,
    rows: list[dict],
    model_rows: list[dict],
    matmul: dict,
    now: datetime.datetime,
    loads: tuple[str, str],
) -> str:
    cuda = args.device.startswith("cuda")
    unit, scale = ("TFLOP/s", 1e12) if cuda else ("GFLOP/s", 1e9)
    lines = [
        f"tri_panet benchmark, {now:%Y-%m-%d %H:%M} UTC",
        f"device: {args.device}: {device_description(args.device)}",
        f"threads: torch.get_num_threads() = {torch.get_num_threads()}"
        + (f" (--threads {args.threads})" if args.threads else " (torch's default)"),
        f"load average (1 / 5 / 15 min): {loads[0]} at the start, {loads[1]} at the end"
        + ("" if cuda else "; above ~1.5 on this machine's cores the timings are inflated by other jobs"),
        f"torch {torch.__version__}, triton {_triton_version()}, python {platform.python_version()}"
        + (f", tf32 matmul allowed: {torch.backends.cuda.matmul.allow_tf32}" if cuda else ""),
        f"command: {_command_line()}",
        "machine matmul (torch.matmul, "
        f"{args.matmul_size}x{args.matmul_size}x{args.matmul_size}, median): "
        + ", ".join(f"{name} {rate / scale:.1f} {unit}" for name, rate in matmul.items()),
    ]
    if rows:
        lines += ["", f"attention config {OP_CONFIGS[args.config].describe()}", ""]
        lines += _op_table(args, rows, unit, scale)
    if model_rows:
        lines += [""] + _model_table(args, model_rows)
    return "\n".join(lines) + "\n"


def _model_table(args: argparse.Namespace, rows: list[dict]) -> list[str]:
    header = ("kind", "model", "backend", "size", "batch", "time ms", "img/s", "s/Mpx", "note")
    table = [header]
    for row in rows:
        c = row["case"]
        train = c["kind"] == "train_step"
        table.append(
            (
                c["kind"],
                c["model"],
                c["backend"],
                str(c["size"]),
                str(c["batch"]),
                _fmt(row.get("time") and row["time"] * 1e3, ".1f"),
                _fmt(row.get("images_per_s"), ".2f") if train else "-",
                "-" if train else _fmt(row.get("s_per_mpx"), ".2f"),
                row["note"],
            )
        )
    lines = _table_lines(table, {3, 4, 5, 6, 7})
    lines += [
        "",
        f"time: median of >= {args.repeats} calls (more until {args.min_time:g} s; 1 call when the warm-up took "
        f"> {LONG_CALL_SECONDS:g} s) after one warm-up; float32, the attention backend as named, "
        "default-initialised weights, inputs uniform in [0, 1].",
        "train_step: one optimiser step as tri_panet.training.Trainer takes it (zero_grad, forward, F.l1_loss, "
        "backward, Adam.step with TrainConfig's lr and betas; no lr schedule) on a batch of `batch` patches of "
        "size x size input px (default: TrainConfig's patch_size and batch_size; for sr the LR side, target "
        "size*scale); img/s = batch / time.",
        "restore: tri_panet.inference.restore of one size x size input image with the tiling of `tri-panet "
        "restore` without tiling flags (its parser's defaults); s/Mpx = time / output megapixels (output side "
        "= size * scale). Whole-image attention costs grow as (H W)^2, so s/Mpx depends on the size.",
    ]
    return lines


def _op_table(args: argparse.Namespace, rows: list[dict], unit: str, scale: float) -> list[str]:
    cuda = args.device.startswith("cuda")
    cfg = OP_CONFIGS[args.config]
    lines: list[str] = []
    header = (
        "kind",
        "impl",
        "size",
        "dtype",
        "pass",
        "time ms",
        "peak MiB",
        unit,
        "% mm",
        "max abs err",
        "rel err",
        "note",
    )
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
    lines += _table_lines(table, {2, 5, 6, 7, 8, 9, 10})

    methods = sorted({row["memory_method"] for row in rows if "memory_method" in row})
    oracles = sorted({row["oracle"] for row in rows if "oracle" in row})
    pair_info = "; ".join(
        "{} px: {} x {} = {:.3g} M".format(s, *query_key_pairs(s), math.prod(query_key_pairs(s)) / 1e6)
        for s in args.sizes
    )
    lines += [
        "",
        f"time: median of >= {args.repeats} runs (more until {args.min_time:g} s; 1 run when the warm-up took "
        f"> {LONG_CALL_SECONDS:g} s) after one warm-up; "
        "fwd runs under torch.no_grad, fwd+bwd = forward + backward of a fixed random output gradient.",
        f"{unit}: {cfg.flops_per_pair} FLOP per query-key pair forward (2*d_qk + 2*d_v), fwd+bwd counted "
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
            f"a tiny ({WARMUP_SIZE} px) warm-up case and input creation, the peak RSS is reset "
            "(/proc/self/clear_refs) and "
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
        f"inputs: the block's own (random-init, seed 0) embeddings of N(0, 1) features [1, {cfg.channels}, S, S]; "
        "sdpa = unfold + normalised keys + F.scaled_dot_product_attention + fold; sdpa_pad = the same with "
        "query/key patches zero-padded to d_v so fused SDPA kernels that need equal widths qualify.",
        f"memory budget for skipping: {args.mem_budget_gb:.1f} GB (estimated from the score-matrix size).",
    ]
    return lines


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to a file that must not exist yet (mode "x": results are never overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the report (``python bench/report.py``): run the cases, print one table
    to stdout, and with ``--out`` write it (and raw JSON) to a file."""
    args = _parse_args(argv)
    now = datetime.datetime.now(datetime.timezone.utc)
    out = _output_path(args, f"{now:%Y%m%d-%H%M%S}")  # fail before the run, not after it
    text, raw = run_report(args)
    sys.stdout.write(text)
    sys.stdout.flush()
    if out is not None:
        _write_new(out, text)
        _write_new(out.with_suffix(".json"), json.dumps(raw, indent=1) + "\n")
        print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
