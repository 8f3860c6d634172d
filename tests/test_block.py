"""The PyramidAttention block: official names and outputs, pyramid resampling, backends agree."""

import official_panet_reference as official
import pytest
import torch
import torch.nn.functional as F

from tri_panet.nn import DEFAULT_SCALES, PyramidAttention, build_pyramid


def _official_block(channels=16, reduction=2, res_scale=1.0, seed=0):
    torch.manual_seed(seed)
    block = official.PyramidAttention(channel=channels, reduction=reduction, res_scale=res_scale).double()
    # Non-default PReLU slopes and biases so that a mix-up of modules shows.
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block


def test_state_dict_names_equal_official():
    ours = PyramidAttention(channels=64)
    expected = {
        f"{m}.{p}"
        for m in ("conv_match_L_base", "conv_match", "conv_assembly")
        for p in ("0.weight", "0.bias", "1.weight")
    } | {"escape_NaN"}
    assert set(ours.state_dict()) == expected
    assert set(official.PyramidAttention().state_dict()) == expected
    assert ours.escape_NaN.shape == (1,) and ours.escape_NaN.item() == pytest.approx(1e-4)


@pytest.mark.parametrize("size", [(13, 17), (20, 20), (7, 11)])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_official_block_loads_strictly_and_matches(size, backend):
    reference_block = _official_block(res_scale=0.1)
    ours = PyramidAttention(channels=16, res_scale=0.1, recompute_scale_factor=False, backend=backend).double()
    ours.load_state_dict(reference_block.state_dict(), strict=True)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(ours(x), reference_block(x), rtol=1e-9, atol=1e-9)


def test_default_scales_are_the_official_ones():
    assert DEFAULT_SCALES == tuple(official.PyramidAttention().scale)


@pytest.mark.parametrize("recompute", [True, False])
def test_pyramid_sizes_and_resampling(recompute):
    x = torch.randn(1, 3, 23, 19, dtype=torch.float64)
    levels = build_pyramid(x, DEFAULT_SCALES, recompute)
    assert levels[0] is x
    for s, level in zip(DEFAULT_SCALES, levels):
        assert level.shape[2:] == (int(23.0 * s), int(19.0 * s))
        if s != 1:
            expected = F.interpolate(
                x, scale_factor=s, mode="bicubic", align_corners=False, recompute_scale_factor=recompute
            )
            torch.testing.assert_close(level, expected)
    # The two conventions really differ (PyTorch 1.1 ratio vs 1/s), so the flag matters.
    other = build_pyramid(x, DEFAULT_SCALES, not recompute)
    assert not torch.allclose(levels[1], other[1])


@pytest.mark.parametrize("scales", [(1.0,), (1.0, 0.5), (0.75, 0.5, 0.35), tuple(1 - i / 20 for i in range(8))])
def test_any_number_of_levels_backends_agree_forward_and_backward(scales):
    torch.manual_seed(1)
    blocks = {
        name: PyramidAttention(channels=6, reduction=3, scales=scales, backend=name).double()
        for name in ("torch", "reference")
    }
    blocks["reference"].load_state_dict(blocks["torch"].state_dict())
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64)
    outs, grads = {}, {}
    for name, block in blocks.items():
        xi = x.clone().requires_grad_()
        out = block(xi)
        out.square().sum().backward()
        outs[name] = out
        grads[name] = [xi.grad] + [p.grad for p in block.parameters()]
    torch.testing.assert_close(outs["torch"], outs["reference"], rtol=1e-9, atol=1e-9)
    for g, e in zip(grads["torch"], grads["reference"]):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-7)


def test_res_scale_multiplies_the_input():
    block = PyramidAttention(channels=4, reduction=2, res_scale=0.0, backend="torch")
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        attention_only = block(x)
        block.res_scale = 0.1
        torch.testing.assert_close(block(x), attention_only + 0.1 * x)
