"""The op is a registered custom op: torch.compile(fullgraph=True) runs it without graph breaks."""

import pytest
import torch

from op_inputs import make_inputs
from tri_panet import available_backends
from tri_panet.nn import PyramidAttention


def test_custom_ops_pass_opcheck():
    query, keys, values = make_inputs(2, 3, 2, (5, 6), [(5, 6), (4, 4)], dtype=torch.float64, requires_grad=True)
    args = (query, keys, values, 3, 10.0, 1e-4, 4.0, 2**20, "torch", True)
    torch.library.opcheck(torch.ops.tri_panet.pyramid_attention_forward.default, args)


def _block_and_input(backend="torch"):
    torch.manual_seed(0)
    torch._dynamo.reset()
    return PyramidAttention(channels=8, reduction=2, backend=backend), torch.randn(2, 8, 9, 7)


def test_inductor_compiled_block_matches_eager_inference():
    block, x = _block_and_input()
    compiled = torch.compile(block, fullgraph=True)  # fullgraph: any graph break raises
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), block(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "compiler, backend",
    [
        ("aot_eager", "torch"),
        ("aot_eager", "triton"),  # the Triton kernels (interpreted on CPU) behind the same custom ops
        ("inductor", "torch"),  # needs tri_panet.resize: see docs/KNOWN_ISSUES.md
    ],
)
def test_compiled_block_matches_eager_forward_and_backward(compiler, backend):
    if backend not in available_backends():
        pytest.skip("triton is not installed")
    block, x = _block_and_input(backend)
    compiled = torch.compile(block, fullgraph=True, backend=compiler)
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()

    eager_out = block(x_eager)
    eager_out.square().sum().backward()
    eager_grads = [x_eager.grad] + [p.grad.clone() for p in block.parameters()]
    block.zero_grad()

    compiled_out = compiled(x_compiled)
    compiled_out.square().sum().backward()
    compiled_grads = [x_compiled.grad] + [p.grad for p in block.parameters()]

    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-5)
    for c, e in zip(compiled_grads, eager_grads):
        # float32 sums over every pixel, taken in another order: 1e-3 relative.
        torch.testing.assert_close(c, e, rtol=1e-3, atol=1e-4 * e.abs().max().item())
