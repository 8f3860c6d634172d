"""Gradients of the triton backend against autograd through the naive reference (interpreter)."""

import pytest
import torch

pytest.importorskip("triton")

from op_inputs import gradients, make_inputs  # noqa: E402

from tri_panet.ops import triton_configs as tb  # noqa: E402
from tri_panet.ops.reference import pyramid_attention_reference  # noqa: E402
from tri_panet.ops.triton_launcher import backward as triton_backward  # noqa: E402
from tri_panet.ops.triton_launcher import forward as triton_forward  # noqa: E402
from tri_panet.ops.triton_launcher import pyramid_attention_triton

needs_interpreter = pytest.mark.skipif(not tb.interpreting(), reason="needs TRITON_INTERPRET=1 (CPU tests)")

OPTS = dict(softmax_scale=10.0, key_eps=1e-4, fold_divisor=4.0)


def max_error(a, b):
    return (a.double() - b.double()).abs().max().item()


# (batch, Cq, Cv, query size, level sizes, patch size)
CASES = [
    pytest.param(2, 5, 3, (5, 7), [(5, 7), (4, 6)], 3, id="b2-5x7-2lv-k3"),
    pytest.param(1, 17, 6, (7, 9), [(7, 9), (9, 10), (5, 6)], 3, id="7x9-bigger-level-k3"),
    pytest.param(1, 3, 5, (4, 3), [(4, 3), (2, 2)], 5, id="k5"),
    pytest.param(1, 16, 20, (5, 5), [(5, 5), (3, 4)], 1, id="k1"),
    pytest.param(1, 3, 5, (1, 1), [(1, 1)], 3, id="1x1-1lv-k3"),
    pytest.param(1, 8, 4, (7, 5), [(7, 5), (6, 4), (5, 4), (4, 3), (4, 3)], 3, id="7x5-5lv-k3"),
]


@needs_interpreter
@pytest.mark.parametrize("batch, cq, cv, size, levels, k", CASES)
def test_gradients_fp32_match_reference(batch, cq, cv, size, levels, k):
    q, ks, vs = make_inputs(batch, cq, cv, size, levels)
    g = torch.Generator().manual_seed(7)
    grad_out = torch.randn(batch, cv, *size, generator=g)
    got = gradients(pyramid_attention_triton, q, ks, vs, grad_out, patch_size=k, **OPTS)
    ref = gradients(
        pyramid_attention_reference,
        q.double(),
        [x.double() for x in ks],
        [x.double() for x in vs],
        grad_out.double(),
        patch_size=k,
        **OPTS,
    )
    assert max_error(got[0], ref[0]) <= 1e-4
    assert max_error(got[1], ref[1]) <= 1e-4
    for a, b in zip(got[2] + got[3], ref[2] + ref[3]):
        assert a.shape == b.shape and a.dtype == torch.float32
        assert max_error(a, b) <= 1e-4


@needs_interpreter
def test_gradients_through_key_norm_floor():
    """Zero key patches (floor active: no gradient through the norm) and tiny keys."""
    q, ks, vs = make_inputs(1, 4, 3, (5, 6), [(5, 6), (3, 3)], seed=3)
    ks[0][..., :2, :] = 0.0
    ks[1] = ks[1] * 1e-6
    grad_out = torch.randn(1, 3, 5, 6, generator=torch.Generator().manual_seed(8))
    opts = dict(softmax_scale=4.0, key_eps=1e-3, fold_divisor=3.0)
    got = gradients(pyramid_attention_triton, q, ks, vs, grad_out, patch_size=3, **opts)
    ref = gradients(
        pyramid_attention_reference,
        q.double(),
        [x.double() for x in ks],
        [x.double() for x in vs],
        grad_out.double(),
        patch_size=3,
        **opts,
    )
    for a, b in zip([got[1], *got[2], *got[3]], [ref[1], *ref[2], *ref[3]]):
        # dK/dk = 1/key_eps where the floor is active: gradients reach ~1e2, compare relatively
        assert max_error(a, b) <= 1e-4 * max(1.0, b.abs().max().item())


@needs_interpreter
def test_gradients_fp16_within_tolerance():
    q, ks, vs = make_inputs(1, 6, 5, (5, 6), [(5, 6), (4, 4)], dtype=torch.float16, seed=4)
    grad_out = torch.randn(1, 5, 5, 6, generator=torch.Generator().manual_seed(9)).half()
    got = gradients(pyramid_attention_triton, q, ks, vs, grad_out, patch_size=3, **OPTS)
    ref = gradients(
        pyramid_attention_reference,
        q.float(),
        [x.float() for x in ks],
        [x.float() for x in vs],
        grad_out.float(),
        patch_size=3,
        **OPTS,
    )
    for a, b in zip([got[1], *got[2], *got[3]], [ref[1], *ref[2], *ref[3]]):
        assert a.dtype == torch.float16
        assert max_error(a, b) <= 2e-2 * b.abs().max().item() + 1e-3


@needs_interpreter
def test_small_blocks_many_programs(monkeypatch):
    """16 x 16 blocks: several query programs and several ragged key blocks per level meet in
    the atomic folds of dQ, dK and dV."""
    monkeypatch.setattr(tb, "INTERPRET_CONFIG", (16, 16, 4, 1))
    q, ks, vs = make_inputs(1, 5, 4, (4, 6), [(4, 6), (3, 4)], seed=5)
    grad_out = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(10))
    got = gradients(pyramid_attention_triton, q, ks, vs, grad_out, patch_size=3, **OPTS)
    ref = gradients(
        pyramid_attention_reference,
        q.double(),
        [x.double() for x in ks],
        [x.double() for x in vs],
        grad_out.double(),
        patch_size=3,
        **OPTS,
    )
    for a, b in zip([got[0], got[1], *got[2], *got[3]], [ref[0], ref[1], *ref[2], *ref[3]]):
        assert max_error(a, b) <= 1e-4


@needs_interpreter
def test_backward_without_saved_output_matches():
    """triton_backward rebuilds the unfolded output when it is not given (library use)."""
    q, ks, vs = make_inputs(1, 4, 3, (4, 5), [(4, 5), (3, 3)], seed=6)
    grad_out = torch.randn(1, 3, 4, 5, generator=torch.Generator().manual_seed(11))
    _, lse, _ = triton_forward(q, ks, vs, patch_size=3, **OPTS)
    dq, dks, dvs = triton_backward(grad_out, q, ks, vs, lse, patch_size=3, **OPTS)
    ref = gradients(pyramid_attention_triton, q, ks, vs, grad_out, patch_size=3, **OPTS)
    for a, b in zip([dq, *dks, *dvs], [ref[1], *ref[2], *ref[3]]):
        assert max_error(a, b) <= 1e-5


@needs_interpreter
def test_optimizer_steps_match_torch_backend():
    """A few SGD steps of the PANet block give the same parameters with both backends."""
    from tri_panet.nn import PyramidAttention

    torch.manual_seed(0)
    blocks = {
        name: PyramidAttention(channels=8, reduction=2, scales=(1.0, 0.8, 0.6), backend=name)
        for name in ("torch", "triton")
    }
    blocks["triton"].load_state_dict(blocks["torch"].state_dict())
    x = torch.randn(1, 8, 7, 8, generator=torch.Generator().manual_seed(12))
    target = torch.randn(1, 8, 7, 8, generator=torch.Generator().manual_seed(13))
    for block in blocks.values():
        opt = torch.optim.SGD(block.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(block(x), target)
            loss.backward()
            opt.step()
    torch_params = dict(blocks["torch"].named_parameters())
    for name, p in blocks["triton"].named_parameters():
        assert max_error(p.detach(), torch_params[name].detach()) <= 1e-5, name
