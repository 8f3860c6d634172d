"""GPU tests of the triton backend: run all of them with ``python -m pytest -m cuda tests/test_cuda.py``.

Skipped without a CUDA GPU (tests/conftest.py). They compile the real kernels with the
autotuner, in float32 (IEEE and TF32), float16 and bfloat16, at PANet and PA-EDSR widths.
"""

import pytest
import torch

pytest.importorskip("triton")

from op_inputs import pyramid_sizes  # noqa: E402

from tri_panet import pyramid_attention  # noqa: E402
from tri_panet.ops import resolve_backend  # noqa: E402
from tri_panet.ops import triton_configs as tb  # noqa: E402
from tri_panet.ops.reference import pyramid_attention_reference  # noqa: E402
from tri_panet.ops.torch_tiled import forward as tiled_forward  # noqa: E402
from tri_panet.ops.triton_launcher import forward as triton_forward  # noqa: E402
from tri_panet.ops.triton_launcher import pyramid_attention_triton

pytestmark = pytest.mark.cuda

OPTS = dict(softmax_scale=10.0, key_eps=1e-4, fold_divisor=4.0)


def make_inputs(batch, cq, cv, size, level_sizes, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    query = torch.randn(batch, cq, *size, generator=g, device="cuda").to(dtype)
    keys = [torch.randn(batch, cq, h, w, generator=g, device="cuda").to(dtype) for h, w in level_sizes]
    values = [torch.randn(batch, cv, h, w, generator=g, device="cuda").to(dtype) for h, w in level_sizes]
    return query, keys, values


@pytest.fixture
def ieee():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


SHAPES = [
    pytest.param(2, 5, 3, (5, 7), [(5, 7), (4, 6)], 3, id="tiny-odd"),
    pytest.param(1, 17, 17, (11, 13), [(11, 13), (13, 15), (8, 10)], 3, id="bigger-level"),
    pytest.param(1, 3, 5, (1, 1), [(1, 1), (3, 2)], 5, id="1x1-k5"),
    pytest.param(1, 32, 64, (48, 48), pyramid_sizes(48, 48), 3, id="panet-48"),
    pytest.param(1, 32, 256, (24, 20), pyramid_sizes(24, 20), 3, id="pa-edsr-24x20"),
    pytest.param(2, 16, 33, (17, 9), [(17, 9)], 1, id="k1"),
]


@pytest.mark.parametrize("batch, cq, cv, size, levels, k", SHAPES)
def test_forward_fp32_ieee(ieee, batch, cq, cv, size, levels, k):
    q, ks, vs = make_inputs(batch, cq, cv, size, levels)
    out, lse, _ = triton_forward(q, ks, vs, patch_size=k, **OPTS)
    ref = pyramid_attention_reference(
        q.double(), [x.double() for x in ks], [x.double() for x in vs], patch_size=k, **OPTS
    )
    assert (out.double() - ref).abs().max().item() <= 1e-4
    _, lse_ref = tiled_forward(
        q.double(), [x.double() for x in ks], [x.double() for x in vs], patch_size=k, tile_bytes=2**24, **OPTS
    )
    torch.testing.assert_close(lse.double(), lse_ref, atol=1e-4, rtol=1e-6)


# TF32 rounds the score operands to 10 bits: with softmax_scale 10 and unit-variance inputs the
# scores move by ~0.1, so the TF32 check is loose; exactness is checked by the IEEE test above.
@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-1), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("batch, cq, cv, size, levels, k", SHAPES)
def test_forward_tf32_half_bf16(dtype, rel, batch, cq, cv, size, levels, k):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        q, ks, vs = make_inputs(batch, cq, cv, size, levels, dtype=dtype, seed=1)
        out = pyramid_attention(q, ks, vs, patch_size=k, backend="triton", **OPTS)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    ref = pyramid_attention_reference(
        q.double(), [x.double() for x in ks], [x.double() for x in vs], patch_size=k, **OPTS
    )
    assert out.dtype == dtype
    assert (out.double() - ref).abs().max().item() <= rel * ref.abs().max().item()


def test_auto_picks_triton_on_cuda_and_repeats_exactly():
    q, ks, vs = make_inputs(1, 32, 64, (20, 24), pyramid_sizes(20, 24), dtype=torch.float16)
    assert resolve_backend("auto", q) == "triton"
    a = pyramid_attention(q, ks, vs)
    b = pyramid_attention(q, ks, vs)  # after autotuning: the same config, the same sums up to atomics order
    assert (a.float() - b.float()).abs().max().item() <= 1e-3


@pytest.mark.parametrize("batch, cq, cv, size, levels, k", SHAPES[:3] + SHAPES[5:])
def test_gradients_fp32_ieee(ieee, batch, cq, cv, size, levels, k):
    q, ks, vs = make_inputs(batch, cq, cv, size, levels)
    grad_out = torch.randn(batch, cv, *size, device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))

    def grads(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in [q, *ks, *vs]]
        n = len(ks)
        fn(leaves[0], leaves[1 : 1 + n], leaves[1 + n :], patch_size=k, **OPTS).backward(grad_out.to(dtype))
        return [t.grad for t in leaves]

    for a, b in zip(grads(pyramid_attention_triton, torch.float32), grads(pyramid_attention_reference, torch.float64)):
        assert (a.double() - b).abs().max().item() <= 1e-4


def test_non_cuda_tensors_refused_without_interpreter(monkeypatch):
    monkeypatch.setattr(tb, "INTERPRETING", False)  # the mode is fixed at import: patch the record
    q, ks, vs = make_inputs(1, 3, 2, (3, 4), [(3, 4)])
    with pytest.raises(ValueError, match="CUDA"):
        pyramid_attention(q.cpu(), [k.cpu() for k in ks], [v.cpu() for v in vs], backend="triton")


def test_forward_memory_is_linear_at_512px():
    """PANet block at 512 x 512 (5 levels, fp16): extra memory stays far below a score matrix."""
    q, ks, vs = make_inputs(1, 32, 64, (512, 512), pyramid_sizes(512, 512), dtype=torch.float16)
    pyramid_attention(q[..., :32, :32], [k[..., :32, :32] for k in ks], [v[..., :32, :32] for v in vs])  # tune
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = pyramid_attention(q, ks, vs, backend="triton")
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    inputs = sum(t.numel() * t.element_size() for t in [q, *ks, *vs])
    assert out.shape == (1, 64, 512, 512)
    # packed copies of the inputs, float32 output and statistics: a few times the inputs, << 1 GB
    assert extra <= 4 * inputs + 512 * 512 * 64 * 4 * 2, (extra, inputs)
