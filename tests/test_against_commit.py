"""Tests of bench/against_commit.py and its child bench/tree_timer.py (tiny sizes): the child
computes the op it claims to time, runs in the tree it is given, and the table's ratios are
the right way round."""

import argparse
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tri_panet.ops.reference import pyramid_attention_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/ is scripts, not a package
import against_commit  # noqa: E402
import harness  # noqa: E402
import tree_timer  # noqa: E402

SIZE = 6


@pytest.fixture(scope="module")
def inputs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "inputs.safetensors"
    against_commit._save_op_inputs([SIZE], path)
    return path


def test_op_runner_computes_the_op(inputs_file):
    assert tree_timer.OP_OPTIONS == harness.OP_OPTIONS  # its own copy (it imports nothing from bench/)
    tensors = load_file(str(inputs_file))
    out = tree_timer.op_runner(tensors, SIZE, "torch", backward=False)()
    query, n_levels = tensors[f"query_{SIZE}"], 5
    keys = [tensors[f"key_{SIZE}_{i}"] for i in range(n_levels)]
    values = [tensors[f"value_{SIZE}_{i}"] for i in range(n_levels)]
    expected = pyramid_attention_reference(query, keys, values, **tree_timer.OP_OPTIONS)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    grads = tree_timer.op_runner(tensors, SIZE, "torch", backward=True)()
    assert [g.shape for g in grads] == [t.shape for t in (query, *keys, *values)]


def test_child_times_the_tree_it_is_given(inputs_file, tmp_path):
    cases = [
        {"kind": "op", "size": SIZE, "backend": "torch", "backward": True, "reps": 2},
        {"kind": "train_step", "model": "tiny-denoise", "backend": "torch", "batch": 1, "patch": 8, "reps": 2},
    ]
    spec = {"threads": 1, "inputs": str(inputs_file), "cases": cases}
    results = against_commit._run_child(against_commit.REPO, spec, tmp_path)
    assert [r["kind"] for r in results] == ["op", "train_step"]
    assert all(len(r["seconds"]) == 2 and min(r["seconds"]) > 0 for r in results)
    with pytest.raises(RuntimeError, match="imported tri_panet from"):
        # no tri_panet in tmp_path: the child finds the installed one, and the parent notices
        against_commit._run_child(tmp_path, {**spec, "cases": []}, tmp_path)


def test_table_ratios_are_old_over_new():
    args = argparse.Namespace(commit="abc1234", sizes=[48])

    def entry(seconds, **case):
        return {"case": case, "seconds": seconds}

    old = [entry([0.30, 0.20], kind="op", size=48, backend="torch", backward=b) for b in (False, True)]
    old.append(entry([4.0], kind="train_step", model="tiny-denoise", backend="auto"))
    new = [entry([0.10], kind="op", size=48, backend="torch", backward=b) for b in (False, True)]
    new.append(entry([0.05], kind="op", size=48, backend="cpu_fused", backward=False))
    new.append(entry([1.0], kind="train_step", model="fast-denoise", backend="auto"))
    timed = {"old": dict(enumerate(old)), "new": dict(enumerate(new))}
    text = against_commit.format_table(args, timed, ["header"])
    assert "| forward, 48 px | 200.0 / 250.0 | 100.0 / 100.0 | x2.00 / x2.50 | 50.0 / 50.0 | x4.00 / x5.00 |" in text
    assert "| forward + backward, 48 px | 200.0 / 250.0 | 100.0 / 100.0 | x2.00 / x2.50 | - | - |" in text
    assert "| abc1234, tiny-denoise (auto) | 2.00 / 2.00 | x1.00 / x1.00 |" in text
    assert "| this tree, fast-denoise (auto) | 8.00 / 8.00 | x4.00 / x4.00 |" in text
    assert "tiny-denoise (torch)" not in text  # not timed: no row
