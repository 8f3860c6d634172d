"""The fused C kernel backend ("cpu_fused") against the reference and the torch path, and its build."""

import os

import pytest
import torch
from op_inputs import cast, gradients, make_inputs, pyramid_sizes

from tri_panet import pyramid_attention
from tri_panet.ops import backends, cpu_build
from tri_panet.ops.cpu_fused import pyramid_attention_cpu_fused
from tri_panet.ops.reference import pyramid_attention_reference
from tri_panet.ops.torch_tiled import pyramid_attention_torch

needs_compiler = pytest.mark.skipif(
    backends.CPU_FUSED_PROBLEM is not None, reason=f"cpu_fused not offered: {backends.CPU_FUSED_PROBLEM}"
)

CASES = [
    # (batch, cq, cv, query size, level sizes): 3 x 3 patches only
    (1, 1, 1, (1, 1), [(1, 1)]),
    (2, 5, 3, (7, 11), pyramid_sizes(7, 11)),  # primes, five levels, channels not a multiple of 16
    (1, 3, 7, (13, 5), [(13, 5), (17, 9)]),  # a level larger than the query map
    (1, 4, 2, (5, 5), [(5, 5), (3, 3), (2, 2), (1, 1), (4, 6), (6, 4)]),  # many levels, 1 x 1 among them
    (1, 16, 32, (19, 17), pyramid_sizes(19, 17)),  # the tiny models' channels
    (1, 20, 40, (3, 29), [(3, 29)]),  # one level; channels padded to 32 / 48
]
TILINGS = [dict(), dict(tile=1, chunk_rows=1), dict(tile=4, chunk_rows=3)]


def _reference_gradients(inputs, grad_out):
    return gradients(pyramid_attention_reference, *cast(inputs, torch.float64), grad_out.double())


@needs_compiler
@pytest.mark.parametrize("tiling", TILINGS, ids=["default", "tile1-chunk1", "tile4-chunk3"])
@pytest.mark.parametrize("batch, cq, cv, query_size, level_sizes", CASES)
def test_forward_and_gradients_match_reference_float32(batch, cq, cv, query_size, level_sizes, tiling):
    inputs = make_inputs(batch, cq, cv, query_size, level_sizes)
    grad_out = torch.randn(batch, cv, *query_size, generator=torch.Generator().manual_seed(1))
    got = gradients(pyramid_attention_cpu_fused, *inputs, grad_out, **tiling)
    expected = _reference_gradients(inputs, grad_out)
    assert got[0].dtype == torch.float32 and got[0].shape == expected[0].shape
    torch.testing.assert_close(got[0].double(), expected[0], rtol=0, atol=1e-5)
    for g, e in zip([got[1], *got[2], *got[3]], [expected[1], *expected[2], *expected[3]]):
        assert g.dtype == torch.float32 and g.shape == e.shape
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4 * max(1.0, e.abs().max().item()))


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_float64_equals_the_torch_path_on_any_thread_count(threads):
    inputs = make_inputs(2, 6, 5, (11, 13), pyramid_sizes(11, 13), dtype=torch.float64)
    grad_out = torch.randn(2, 5, 11, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = gradients(pyramid_attention_cpu_fused, *inputs, grad_out, tile=5, chunk_rows=2)
    finally:
        torch.set_num_threads(before)
    expected = gradients(pyramid_attention_torch, *inputs, grad_out)
    for g, e in zip([got[0], got[1], *got[2], *got[3]], [expected[0], expected[1], *expected[2], *expected[3]]):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


@needs_compiler
def test_gradcheck_float64():
    levels = [(4, 5), (3, 4), (2, 2)]
    query, keys, values = make_inputs(2, 3, 2, (4, 5), levels, dtype=torch.float64, requires_grad=True)

    def op(q, *levels):
        return pyramid_attention_cpu_fused(q, levels[:3], levels[3:], softmax_scale=2.0, tile=2, chunk_rows=1)

    assert torch.autograd.gradcheck(op, (query, *keys, *values), fast_mode=True)


@needs_compiler
@pytest.mark.parametrize("dtype, out_tol, grad_tol", [(torch.float16, 2e-3, 1e-2), (torch.bfloat16, 5e-2, 5e-2)])
def test_half_precision_forward_and_backward(dtype, out_tol, grad_tol):
    # Errors relative to each tensor's largest value; the inputs are rounded to dtype too.
    inputs = make_inputs(2, 8, 6, (9, 10), pyramid_sizes(9, 10))
    grad_out = torch.randn(2, 6, 9, 10, generator=torch.Generator().manual_seed(3))
    got = gradients(pyramid_attention_cpu_fused, *cast(inputs, dtype), grad_out.to(dtype))
    expected = _reference_gradients(inputs, grad_out)
    tolerances = [out_tol] + [grad_tol] * (1 + 2 * len(inputs[1]))
    for g, e, tol in zip(
        [got[0], got[1], *got[2], *got[3]], [expected[0], expected[1], *expected[2], *expected[3]], tolerances
    ):
        assert g.dtype == dtype
        assert (g.double() - e).abs().max().item() <= tol * e.abs().max().item()


@needs_compiler
def test_dispatch_and_the_key_floor():
    # Keys far below the floor: the norm passes no gradient, as in the reference.
    query, keys, values = make_inputs(1, 2, 2, (3, 3), [(3, 3)], dtype=torch.float64)
    keys = [1e-7 * keys[0]]
    grad_out = torch.ones(1, 2, 3, 3, dtype=torch.float64)
    got = gradients(lambda *a: pyramid_attention(*a, backend="cpu_fused"), query, keys, values, grad_out)
    expected = gradients(pyramid_attention_reference, query, keys, values, grad_out)
    for g, e in zip([got[0], got[1], *got[2]], [expected[0], expected[1], *expected[2]]):
        torch.testing.assert_close(g, e)


@needs_compiler
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(patch_size=5), "patch_size=3 only"),
        (dict(tile=0), "tile must be a positive int"),
        (dict(chunk_rows=2.5), "chunk_rows must be a positive int"),
        (dict(tile_bytes=0), "tile_bytes"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    query, keys, values = make_inputs(1, 2, 2, (5, 5), [(5, 5)])
    with pytest.raises((ValueError, TypeError), match=message):
        pyramid_attention_cpu_fused(query, keys, values, **kwargs)


@needs_compiler
def test_rejects_tensors_off_the_cpu():
    query, keys, values = make_inputs(1, 2, 2, (5, 5), [(5, 5)])
    with pytest.raises(ValueError, match="CPU tensors, got query on meta"):
        pyramid_attention_cpu_fused(query.to("meta"), [k.to("meta") for k in keys], [v.to("meta") for v in values])


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRI_PANET_CACHE_DIR", str(tmp_path))
    cpu_build.load.cache_clear()
    yield tmp_path / "cpu_kernels"
    cpu_build.load.cache_clear()


@needs_compiler
def test_builds_once_into_the_cache_atomically(fresh_cache):
    cpu_build.load(torch.float32, 16, 16)
    built = sorted(fresh_cache.iterdir())
    assert [p.suffix for p in built] == [".so"]  # no temporary build folder left behind
    stamp = built[0].stat().st_mtime_ns
    cpu_build.load.cache_clear()
    cpu_build.load(torch.float32, 16, 16)  # a new process would find the file: no rebuild
    assert sorted(fresh_cache.iterdir()) == built and built[0].stat().st_mtime_ns == stamp
    cpu_build.load(torch.float32, 16, 16, ("-DUB=4",))  # other flags: another file
    assert len(list(fresh_cache.iterdir())) == 2


def test_a_missing_compiler_is_reported(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert "not found" in cpu_build.compiler_problem()


@needs_compiler
def test_a_failing_compiler_raises_build_error_with_the_command(fresh_cache, monkeypatch):
    monkeypatch.setenv("CC", f"{os.environ.get('CC', 'cc')} -include /nonexistent/header.h")  # the compile fails
    with pytest.raises(cpu_build.BuildError, match="building the CPU kernel failed"):
        cpu_build.load(torch.float32, 16, 16)
    assert not [p for p in fresh_cache.iterdir() if p.suffix == ".so"]


def test_unavailable_backend_names_the_reason(monkeypatch):
    monkeypatch.setattr(backends, "CPU_FUSED_PROBLEM", "no C compiler: 'cc' not found (set CC to one)")
    monkeypatch.delitem(backends.BACKENDS, "cpu_fused", raising=False)
    with pytest.raises(ValueError, match="cpu_fused' is unavailable: no C compiler"):
        backends.explain_backend(torch.zeros(1, 1, 1, 1), "cpu_fused")
