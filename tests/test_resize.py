"""``bicubic_downscale``: the same numbers as ``F.interpolate``, and compiled gradients stay right."""

import pytest
import torch
import torch.nn.functional as F

from tri_panet.nn import DEFAULT_SCALES, build_pyramid
from tri_panet.resize import bicubic_downscale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [(1, 2), (5, 5), (9, 7), (13, 31)])
@pytest.mark.parametrize("recompute", [True, False])
def test_bitwise_equal_to_interpolate(dtype, size, recompute):
    x = torch.randn(2, 3, *size).to(dtype)
    for s in (0.9, 0.8, 0.7, 0.6, 0.5):
        if min(int(n * s) for n in size) < 1:
            continue
        expected = F.interpolate(
            x, scale_factor=s, mode="bicubic", align_corners=False, recompute_scale_factor=recompute
        )
        assert torch.equal(bicubic_downscale(x, s, recompute), expected)


@pytest.mark.parametrize("recompute", [True, False])
def test_gradient_equals_interpolate_gradient(recompute):
    x = torch.randn(2, 3, 11, 8, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(bicubic_downscale(x, 0.7, recompute), x, grad)
    expected = F.interpolate(x, scale_factor=0.7, mode="bicubic", align_corners=False, recompute_scale_factor=recompute)
    (theirs,) = torch.autograd.grad(expected, x, grad)
    assert torch.equal(ours, theirs)
    assert torch.autograd.gradcheck(
        lambda t: bicubic_downscale(t, 0.7, recompute), (x[:1, :2].detach().requires_grad_(),)
    )


def test_opcheck():
    x = torch.randn(1, 2, 9, 7, requires_grad=True)
    torch.library.opcheck(torch.ops.tri_panet.bicubic_resize.default, (x, 6, 4, None))
    torch.library.opcheck(torch.ops.tri_panet.bicubic_resize.default, (x, 6, 4, 0.7))


def test_meta_tensors_give_level_shapes():
    levels = build_pyramid(torch.empty(1, 4, 97, 64, device="meta"), DEFAULT_SCALES)
    assert [tuple(level.shape[2:]) for level in levels] == [(97, 64), (87, 57), (77, 51), (67, 44), (58, 38)]


@pytest.mark.parametrize("recompute", [True, False])
def test_inductor_gradient_of_sliced_pyramid(recompute):
    """The reproduction of the inductor bug that tri_panet.resize works around (KNOWN_ISSUES.md):
    with F.interpolate, compiled x.grad is off by O(1) here; through the custom op it is exact."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    x = torch.randn(1, 2, 9, 7, dtype=torch.float64)
    weights = [torch.randn(1, 1, int(9 * s), int(7 * s), dtype=torch.float64) for s in (1.0, 0.9, 0.8, 0.7)]

    def loss(t):
        return sum(
            (level[:, :1] * w).sum() for level, w in zip(build_pyramid(t, (1.0, 0.9, 0.8, 0.7), recompute), weights)
        )

    eager_x, compiled_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss(eager_x).backward()
    torch.compile(loss, fullgraph=True)(compiled_x).backward()
    torch.testing.assert_close(compiled_x.grad, eager_x.grad, rtol=1e-12, atol=1e-12)
