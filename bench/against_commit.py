"""Issue 10's speed targets as ratios against an earlier commit, measured in one run on one machine.

    python bench/against_commit.py [--commit a3f47ca] [--sizes 48 96] [--threads 2] [--rounds 3] [--out]

Adds COMMIT as a temporary git worktree (removed at the end) and times, in child processes
(``tree_timer.py``: the same code for both trees, only ``PYTHONPATH`` differs) that alternate
tree by tree for ``--rounds`` rounds:

- the op at the tiny models' configuration (Cq 16, Cv 32, five levels, the tiny block's own
  embeddings as inputs, float32, batch 1), forward and forward + backward, at each size: the
  commit's torch path against this tree's torch path and ``cpu_fused`` (where a C compiler is);
- one training step of a denoiser (batch 8 of 48 px, L1, Adam): the commit's ``tiny-denoise``
  against this tree's ``tiny-denoise`` (torch path and ``cpu_fused``) and ``fast-denoise``.

Every figure is given as the fastest call over all rounds (the least disturbed) and the median;
every call's seconds are in the JSON.
With ``--out`` the table and the raw JSON go to bench/results/<cpu>_against-<commit>_<UTC stamp>.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from harness import op_inputs, output_gradient
from report import _write_new, default_results_dir, device_description, device_slug, load_average
from safetensors.torch import save_file

from tri_panet.ops import available_backends

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().parent / "tree_timer.py"
OP_MODES = ((False, "forward"), (True, "forward + backward"))
#: (model, backend) training steps timed in this tree; the commit's tree times tiny-denoise on "auto".
NEW_STEPS = (("tiny-denoise", "torch"), ("tiny-denoise", "cpu_fused"), ("fast-denoise", "auto"))
BATCH, PATCH = 8, 48  # the training engine's defaults, and the "48 px, batch 8"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="a3f47ca", help="the commit to compare with (default a3f47ca)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96], help="op map sides, px")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of both trees")
    parser.add_argument("--rounds", type=int, default=3, help="alternations between the trees (default 3)")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per case and round (default 3)")
    parser.add_argument("--out", action="store_true", help="also write the table and JSON to bench/results")
    args = parser.parse_args(argv)
    for name in ("threads", "rounds", "reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.sizes) < 1:
        parser.error(f"--sizes must be >= 1, got {args.sizes}")
    return args


def _save_op_inputs(sizes: list[int], path: Path) -> None:
    """The tiny block's query, keys, values (harness.op_inputs) and an output gradient per size."""
    tensors = {}
    for size in sizes:
        query, keys, values = op_inputs(size, seed=0, config="tiny")
        tensors[f"query_{size}"] = query
        tensors[f"grad_{size}"] = output_gradient(size, seed=1, config="tiny")
        for i, (key, value) in enumerate(zip(keys, values)):
            tensors[f"key_{size}_{i}"], tensors[f"value_{size}_{i}"] = key, value
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(path))


def _cases(args: argparse.Namespace, op_backends: list[str], steps: list[tuple[str, str]]) -> list[dict]:
    cases = [
        {"kind": "op", "size": size, "backend": backend, "backward": backward, "reps": args.reps}
        for size in args.sizes
        for backward, _ in OP_MODES
        for backend in op_backends
    ]
    step = {"kind": "train_step", "batch": BATCH, "patch": PATCH, "reps": args.reps}
    return cases + [{**step, "model": model, "backend": backend} for model, backend in steps]


def _run_child(tree: Path, spec: dict, folder: Path) -> list[dict]:
    """Run tree_timer.py with ``tree`` first on the path; its results (checked to come from ``tree``)."""
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, str(CHILD), str(spec_path)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"timing in {tree} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(report["tri_panet"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the child in {tree} imported tri_panet from {report['tri_panet']}")
    return report["results"]


def _key(case: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in case.items() if k not in ("seconds", "reps")))


def measure(args: argparse.Namespace, log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> dict:
    """Time both trees round by round; {"old"|"new": {case key: {"case", "seconds"}}}."""
    new_backends = [b for b in ("torch", "cpu_fused") if b in available_backends()]
    steps = [(m, b) for m, b in NEW_STEPS if b in (*new_backends, "auto")]
    timed: dict[str, dict] = {"old": {}, "new": {}}
    with tempfile.TemporaryDirectory(prefix="against_commit_") as tmp:
        folder = Path(tmp)
        old_tree = folder / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(old_tree), args.commit],
                       check=True)  # fmt: skip
        try:
            _save_op_inputs(args.sizes, folder / "inputs.safetensors")
            base = {"threads": args.threads, "inputs": str(folder / "inputs.safetensors")}
            trees = {
                "old": (old_tree, _cases(args, ["torch"], [("tiny-denoise", "auto")])),
                "new": (REPO, _cases(args, new_backends, steps)),
            }
            for round_ in range(args.rounds):
                for which, (tree, cases) in trees.items():
                    log(f"round {round_ + 1}/{args.rounds}: {which} tree ({len(cases)} cases)")
                    for result in _run_child(tree, {**base, "cases": cases}, folder):
                        entry = timed[which].setdefault(_key(result), {"case": result, "seconds": []})
                        entry["seconds"] += result["seconds"]
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], check=False)
    return timed


def _times(timed: dict, which: str, **case) -> tuple[float, float] | None:
    """(fastest, median) seconds of the first entry of ``timed[which]`` matching ``case``; None if none."""
    for entry in timed[which].values():
        if all(entry["case"].get(k) == v for k, v in case.items()):
            return min(entry["seconds"]), statistics.median(entry["seconds"])
    return None


def _cells(times: tuple[float, float] | None, base: tuple[float, float] | None, fmt) -> str:
    """ "value | ratio" cells, each "fastest / median"; the ratio is base's time over this one's."""
    if times is None:
        return "- | -"
    ratio = f"x{base[0] / times[0]:.2f} / x{base[1] / times[1]:.2f}" if base else "-"
    return f"{fmt(times[0])} / {fmt(times[1])} | {ratio}"


def format_table(args: argparse.Namespace, timed: dict, header: list[str]) -> str:
    """The op and training-step tables: fastest / median over all calls, ratios against the
    commit's figure of the same row (its time over this tree's: > 1 is faster)."""
    c = args.commit
    ms = lambda seconds: f"{seconds * 1e3:,.1f}"
    lines = [*header, "", f"Op, tiny configuration, ms (fastest / median) and speed-up over {c}'s torch path:", ""]
    lines += [f"| case | {c} torch | this torch | x | this cpu_fused | x |", "|---|--:|--:|--:|--:|--:|"]
    for size in args.sizes:
        for backward, label in OP_MODES:
            old = _times(timed, "old", kind="op", size=size, backward=backward)
            cells = [_cells(_times(timed, "new", kind="op", size=size, backward=backward, backend=b), old, ms)
                     for b in ("torch", "cpu_fused")]  # fmt: skip
            lines.append(f"| {label}, {size} px | {ms(old[0])} / {ms(old[1])} | {' | '.join(cells)} |")
    lines += ["", f"Training step (batch {BATCH} of {PATCH} px), images/s (fastest / median step) and ratio to {c}'s "
              "tiny-denoise:", ""]  # fmt: skip
    lines += ["| tree, model (backend) | images/s | x |", "|---|--:|--:|"]
    per_s = lambda seconds: f"{BATCH / seconds:.2f}"
    old = _times(timed, "old", kind="train_step")
    lines.append(f"| {c}, tiny-denoise (auto) | {_cells(old, old, per_s)} |")
    for model, backend in NEW_STEPS:
        new = _times(timed, "new", kind="train_step", model=model, backend=backend)
        if new is not None:
            lines.append(f"| this tree, {model} ({backend}) | {_cells(new, old, per_s)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    stamp = f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    out = default_results_dir() / f"{device_slug('cpu')}_against-{args.commit}_{stamp}.txt" if args.out else None
    load_start = load_average()
    timed = measure(args)
    header = [
        f"python bench/against_commit.py {' '.join(sys.argv[1:] if argv is None else argv)}",
        f"{stamp} UTC; {device_description('cpu')}; torch {torch.__version__}; {args.threads} thread(s) in both "
        f"trees; {args.rounds} rounds x {args.reps} calls per case",
        f"load average (1 / 5 / 15 min): {load_start} at the start, {load_average()} at the end",
    ]
    text = format_table(args, timed, header)
    sys.stdout.write(text)
    if out is not None:
        _write_new(out, text)
        raw = {which: list(entries.values()) for which, entries in timed.items()}
        _write_new(out.with_suffix(".json"), json.dumps(raw, indent=1) + "\n")
        print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
