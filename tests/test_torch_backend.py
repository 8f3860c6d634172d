"""The memory-efficient torch backend against the naive reference, forward and backward."""

import pytest
import torch
from op_inputs import cast, make_inputs, pyramid_sizes

from tri_panet import pyramid_attention
from tri_panet.ops.reference import pyramid_attention_reference
from tri_panet.ops.torch_tiled import diagonal_box_sum, pyramid_attention_torch, query_tile_shape

CASES = [
    # (batch, cq, cv, query size, level sizes, patch size)
    (1, 1, 1, (1, 1), [(1, 1)], 3),
    (2, 5, 3, (7, 11), pyramid_sizes(7, 11), 3),
    (1, 3, 7, (13, 5), [(13, 5), (17, 9)], 3),  # a level larger than the query map
    (3, 4, 2, (5, 5), [(5, 5), (3, 3), (2, 2), (1, 1), (4, 6), (6, 4)], 1),
    (2, 6, 5, (6, 7), [(6, 7), (5, 6)], 5),
]


@pytest.mark.parametrize("tile_bytes", [None, 1])  # default budget, and one query per tile
@pytest.mark.parametrize("batch, cq, cv, query_size, level_sizes, patch_size", CASES)
def test_forward_matches_reference_float32(batch, cq, cv, query_size, level_sizes, patch_size, tile_bytes):
    query, keys, values = make_inputs(batch, cq, cv, query_size, level_sizes)
    expected = pyramid_attention_reference(*cast((query, keys, values), torch.float64), patch_size=patch_size)
    got = pyramid_attention_torch(query, keys, values, patch_size=patch_size, tile_bytes=tile_bytes)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype, rel_tol", [(torch.float16, 2e-3), (torch.bfloat16, 5e-2)])
def test_forward_half_precision(dtype, rel_tol):
    # bf16 scores carry 8 mantissa bits, so bf16 attention weights are a few percent off.
    query, keys, values = make_inputs(2, 8, 6, (9, 10), pyramid_sizes(9, 10))
    expected = pyramid_attention_reference(*cast((query, keys, values), torch.float64))
    got = pyramid_attention_torch(*cast((query, keys, values), dtype))
    assert got.dtype == dtype
    err = (got.double() - expected).abs().max().item() / expected.abs().max().item()
    assert err <= rel_tol


def test_gradcheck_float64():
    query, keys, values = make_inputs(
        2, 3, 2, (4, 5), [(4, 5), (3, 4), (2, 2)], dtype=torch.float64, requires_grad=True
    )

    def op(q, *levels):
        return pyramid_attention_torch(q, levels[:3], levels[3:], softmax_scale=2.0, tile_bytes=8 * 25 * 7)

    # fast_mode checks random projections of the Jacobian: the same power, far fewer calls.
    assert torch.autograd.gradcheck(op, (query, *keys, *values), fast_mode=True)


@pytest.mark.parametrize("batch, cq, cv, query_size, level_sizes, patch_size", CASES)
def test_gradients_match_reference_float32(batch, cq, cv, query_size, level_sizes, patch_size):
    inputs = make_inputs(batch, cq, cv, query_size, level_sizes, requires_grad=True)
    ref_inputs = [t.detach().double().requires_grad_() for t in (inputs[0], *inputs[1], *inputs[2])]
    n = len(level_sizes)
    grad_out = torch.randn(batch, cv, *query_size, generator=torch.Generator().manual_seed(1))

    out = pyramid_attention_torch(inputs[0], inputs[1], inputs[2], patch_size=patch_size, tile_bytes=1000)
    got = torch.autograd.grad(out, (inputs[0], *inputs[1], *inputs[2]), grad_out)
    ref = pyramid_attention_reference(ref_inputs[0], ref_inputs[1 : 1 + n], ref_inputs[1 + n :], patch_size=patch_size)
    expected = torch.autograd.grad(ref, ref_inputs, grad_out.double())
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4 * max(1.0, e.abs().max().item()))


def test_gradients_half_precision():
    inputs = make_inputs(1, 4, 3, (6, 6), pyramid_sizes(6, 6), dtype=torch.float16, requires_grad=True)
    flat = (inputs[0], *inputs[1], *inputs[2])
    out = pyramid_attention_torch(*inputs)
    got = torch.autograd.grad(out.float().square().sum(), flat)
    ref_flat = [t.detach().double().requires_grad_() for t in flat]
    ref = pyramid_attention_reference(ref_flat[0], ref_flat[1:6], ref_flat[6:])
    expected = torch.autograd.grad(ref.square().sum(), ref_flat)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float16
        torch.testing.assert_close(g.double(), e, rtol=0, atol=2e-2 * e.abs().max().item())


def test_key_floor_blocks_norm_gradient():
    # Keys far below the floor: k_hat = k / eps is linear in k, so the gradient is exactly
    # the linear map's, with no contribution from the norm.
    query, keys, values = make_inputs(1, 2, 2, (3, 3), [(3, 3)], dtype=torch.float64)
    keys = [(1e-7 * keys[0]).requires_grad_()]
    ref_keys = [keys[0].detach().clone().requires_grad_()]
    pyramid_attention_torch(query, keys, values, key_eps=1e-4).sum().backward()
    pyramid_attention_reference(query, ref_keys, values, key_eps=1e-4).sum().backward()
    torch.testing.assert_close(keys[0].grad, ref_keys[0].grad)


def test_query_tile_shape_respects_budget():
    # budget for 100 queries of 100 keys x 4 bytes: a 10 x 10 tile
    assert query_tile_shape(1000, 1000, 100, 1, 4, 40000) == (10, 10)
    assert query_tile_shape(1000, 1000, 100, 2, 4, 40000) == (7, 7)  # 50 queries: 49 of them, square
    assert query_tile_shape(1000, 1000, 100, 1, 4, 1) == (1, 1)  # never an empty tile
    assert query_tile_shape(1000, 1000, 100, 1, 4, 1, min_queries=1000) == (32, 31)  # GPU floor: ~ one row of queries
    assert query_tile_shape(7, 5, 100, 1, 4, 10**9) == (7, 5)  # never larger than the image
    assert query_tile_shape(2, 1000, 100, 1, 4, 40000) == (2, 50)  # short images get wide tiles
    # balanced: 23 columns in tiles of at most 10 -> 3 tiles of 8 (not 10, 10, 3)
    assert query_tile_shape(1000, 23, 100, 1, 4, 40000) == (10, 8)


@pytest.mark.parametrize("tile_bytes", [1, 3 * 7 * 4 * 30, 10**9])
def test_tile_shapes_give_the_same_result(tile_bytes):
    """One-query tiles, ragged tiles and the whole image in one tile agree, forward and backward."""
    query, keys, values = make_inputs(
        2, 3, 2, (7, 9), [(7, 9), (5, 6), (3, 4)], dtype=torch.float64, requires_grad=True
    )
    out = pyramid_attention_torch(query, keys, values, tile_bytes=tile_bytes)
    grads = torch.autograd.grad(out.square().sum(), [query, *keys, *values])
    ref = pyramid_attention_reference(query, keys, values)
    ref_grads = torch.autograd.grad(ref.square().sum(), [query, *keys, *values])
    torch.testing.assert_close(out, ref)
    for g, e in zip(grads, ref_grads):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_diagonal_box_sum_matches_loops(k):
    x = torch.randn(6, 7, 8, 9, dtype=torch.float64)
    got = diagonal_box_sum(x, k)
    expected = torch.zeros(7 - k, 8 - k, 9 - k, 10 - k, dtype=torch.float64)
    for a in range(k):
        for b in range(k):
            expected += x[a : a + 7 - k, b : b + 8 - k, a : a + 9 - k, b : b + 10 - k]
    torch.testing.assert_close(got, expected)


def test_functional_op_dispatches_to_torch_and_reference():
    query, keys, values = make_inputs(1, 3, 2, (5, 4), pyramid_sizes(5, 4))
    a = pyramid_attention(query, keys, values, backend="torch")
    b = pyramid_attention(query, keys, values, backend="reference")
    c = pyramid_attention(query, keys, values)  # auto on CPU -> torch
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", "cuda"], ids=["cpu-tensors", "simulated-gpu-tensors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tile_budget_holds_on_every_device(device, dtype):
    """The query tiles fit the budget on a GPU too: no floor of one image row of queries. The
    GPU tensor is simulated (FakeTensorMode: shape and device only), so this runs without one."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tri_panet.ops.torch_tiled import BACKWARD_TILES, FORWARD_TILES, tile_shape

    with FakeTensorMode():
        query = torch.empty(1, 32, 512, 512, device=device, dtype=dtype)
    n_keys, budget = 865_000, 2**27  # PANet at 512 px, the default 128 MiB
    for buffers in (FORWARD_TILES, BACKWARD_TILES):
        rows, cols = tile_shape(query, n_keys, buffers, budget)
        assert buffers * rows * cols * n_keys * (8 if dtype == torch.float64 else 4) <= budget, (rows, cols)


def test_tile_budget_context_sets_the_default(monkeypatch):
    from tri_panet.ops import tile_budget, torch_tiled

    budgets = []

    def recording_tile_shape(height, width, n_keys, buffers, elem_bytes, budget, *rest):
        budgets.append(budget)
        return query_tile_shape(height, width, n_keys, buffers, elem_bytes, budget, *rest)

    monkeypatch.setattr(torch_tiled, "query_tile_shape", recording_tile_shape)
    query, keys, values = make_inputs(1, 3, 2, (5, 4), [(5, 4), (3, 3)])
    expected = pyramid_attention_torch(query, keys, values, tile_bytes=1)
    with tile_budget(1):
        assert torch.equal(pyramid_attention_torch(query, keys, values), expected)
        pyramid_attention_torch(query, keys, values, tile_bytes=4096)  # an explicit budget wins
    pyramid_attention_torch(query, keys, values)
    assert budgets == [1, 1, 4096, torch_tiled.DEFAULT_TILE_BYTES]


@pytest.mark.parametrize("tile_bytes, error", [(0, ValueError), (-5, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_tile_budget_names_the_argument(tile_bytes, error):
    from tri_panet.ops import tile_budget

    query, keys, values = make_inputs(1, 3, 2, (5, 4), [(5, 4)])
    with pytest.raises(error, match="tile_bytes must be"):
        pyramid_attention_torch(query, keys, values, tile_bytes=tile_bytes)
    with pytest.raises(error, match="tile_bytes must be"), tile_budget(tile_bytes):
        pass
