"""Inference: tiled vs whole image, blending, padding, self-ensemble, SR shapes, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tri_panet.data.degradations import bayer_mosaic, rgb_to_ycbcr
from tri_panet.inference import blend_window, restore, restore_luma, tile_starts
from tri_panet.models import create, describe


def _local_model(scale: int = 1, seed: int = 0) -> nn.Module:
    """Conv stack with receptive-field radius 2 (two 3x3 convs), optional pixel-shuffle x scale."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 3 * scale * scale, 3, padding=1)]
    if scale > 1:
        layers.append(nn.PixelShuffle(scale))
    layers.append(nn.Sigmoid())
    return nn.Sequential(*layers).double()


def _tiny(name="tiny-denoise", seed=0, **kw):
    torch.manual_seed(seed)
    model = create(name, n_feats=8, n_resblocks=2, backend="torch", **kw)
    last = model.tail[-1]
    nn.init.normal_(last.weight, std=0.05)  # undo the zero init, or every model is the identity
    return model


def test_tiled_equals_whole_for_a_local_model():
    model = _local_model()
    x = torch.rand(2, 3, 23, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    whole = restore(model, x)
    with torch.no_grad():
        torch.testing.assert_close(whole, model(x).clamp(0, 1), rtol=0, atol=0)
    # radius 2 <= overlap // 4: every weighted tile pixel saw its full receptive field
    for tile, overlap in ((10, 8), ((12, 9), 8), (16, 11)):
        tiled = restore(model, x, tile=tile, tile_overlap=overlap)
        torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)
    # with too little overlap the tile edges show: the comparison above can fail
    hard = restore(model, x, tile=8, tile_overlap=2)
    assert (hard - whole).abs().max() > 1e-4


def test_tiled_equals_whole_for_a_local_sr_model():
    model = _local_model(scale=2)
    x = torch.rand(1, 3, 17, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    whole = restore(model, x, scale=2)
    assert whole.shape == (1, 3, 34, 28)
    torch.testing.assert_close(restore(model, x, tile=9, tile_overlap=8, scale=2), whole, rtol=0, atol=1e-12)


def test_tiled_close_to_whole_for_tiny_panet():
    model = _tiny()
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    whole = restore(model, x)
    tiled = restore(model, x, tile=16, tile_overlap=8)
    diff = (tiled - whole).abs()
    # attention is non-local, so tiles differ a little, never grossly
    assert diff.mean() < 5e-3 and diff.max() < 3e-2
    assert (whole - x).abs().mean() > 10 * diff.mean()  # the model does change the image


def test_blend_windows_partition_unity():
    """Neighbouring windows laid out by tile_starts sum to a positive weight everywhere,
    and to exactly 1 where two tiles overlap by exactly `overlap`."""
    for length, tile, overlap in ((40, 16, 8), (100, 32, 16), (37, 12, 5), (24, 12, 8)):
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
        total = torch.zeros(length, dtype=torch.float64)
        for s in starts:
            total[s : s + tile] += blend_window(tile, overlap, s > 0, s + tile < length)
        assert total.min() > 0.4
    w = blend_window(16, 8, True, False)
    torch.testing.assert_close(w[:8] + w[:8].flip(0), torch.ones(8, dtype=torch.float64))
    assert w[0] == 0 and w[1] == 0 and w[-1] == 1  # zero margin = overlap // 4


def test_aligned_tile_starts():
    for length, tile, overlap, align in ((192, 64, 16, 2), (384, 48, 16, 2), (100, 32, 15, 4), (500, 64, 16, 2)):
        starts = tile_starts(length, tile, overlap, align)
        assert all(s % align == 0 for s in starts) and starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    assert tile_starts(192, 64, 16) != tile_starts(192, 64, 16, 2)  # unaligned, some start on odd pixels
    with pytest.raises(ValueError, match="multiples of align"):
        tile_starts(101, 32, 8, 2)


@pytest.mark.parametrize("name", ["tiny-demosaic", "fast-demosaic"])
def test_demosaic_tiles_keep_the_bayer_phase(name):
    """Every tile a demosaicing model sees starts on an even pixel, so its mosaic is RGGB
    (red only at even rows and columns); tiles starting on odd pixels (as 16 px tiles of a
    38 px image did) swapped the colours: 10-15 dB instead of 35-40 on 192 and 384 px crops."""
    model = create(name, n_feats=8, n_resblocks=2, scales=(1.0, 0.5), backend="torch")
    assert describe(model).multiple == 2
    tiles = []
    model.register_forward_pre_hook(lambda module, args: tiles.append(args[0]))
    mosaic = bayer_mosaic(torch.rand(1, 3, 37, 38, generator=torch.Generator().manual_seed(0)) + 0.1)
    restore(model, mosaic, tile=16, tile_overlap=5)
    assert len(tiles) > 4
    for x in tiles:
        red = x[:, 0] != 0
        assert red[:, 0::2, 0::2].all() and not red[:, 1::2].any() and not red[:, :, 1::2].any()


def test_no_seams_with_tile_dependent_outputs():
    """A 'model' that outputs the mean of its tile: the blended result varies smoothly."""

    def tile_mean(x):
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)

    x = torch.zeros(1, 3, 8, 48)
    x[..., 24:] = 1.0
    out = restore(tile_mean, x, tile=16, tile_overlap=12)
    steps = out[0, 0, 0].diff().abs()
    assert steps.max() < 0.1  # without blending the tile means jump by >= 0.25 at a seam


def test_padding_to_multiple():
    class NeedsFour(nn.Module):
        def forward(self, x):
            assert x.shape[2] % 4 == 0 and x.shape[3] % 4 == 0, x.shape
            return nn.functional.interpolate(nn.functional.avg_pool2d(x, 2), scale_factor=2, mode="nearest")

    x = torch.rand(2, 3, 10, 13)
    out = restore(NeedsFour(), x, multiple=4)
    assert out.shape == x.shape
    tiled = restore(NeedsFour(), x, tile=8, tile_overlap=4, multiple=4)
    assert tiled.shape == x.shape
    tiny = restore(NeedsFour(), torch.rand(3, 2, 3), multiple=4)  # pad larger than the image: replicate
    assert tiny.shape == (3, 2, 3)
    with pytest.raises(ValueError, match="multiple"):
        restore(NeedsFour(), x, tile=10, tile_overlap=4, multiple=4)


def _dihedral_mean(fn, x):
    """Independent oracle: the 8 symmetries as rotations (rot90 k) with and without a flip."""
    outs = []
    for flip in (False, True):
        for k in range(4):
            xt = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
            y = torch.rot90(fn(xt), -k, dims=(-2, -1))
            outs.append(y.flip(-1) if flip else y)
    return torch.stack(outs).mean(0)


def test_self_ensemble():
    blur = nn.Conv2d(3, 3, 3, padding=1, bias=False, groups=3).double()
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64) / 16
    with torch.no_grad():
        blur.weight.copy_(k.expand(3, 1, 3, 3))
    x = torch.rand(1, 3, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(restore(blur, x, self_ensemble=True), restore(blur, x), rtol=0, atol=1e-14)
    # a non-equivariant model: the ensemble differs from one pass and equals the oracle
    model = _local_model(seed=6)
    ens = restore(model, x, self_ensemble=True)
    with torch.no_grad():
        oracle = _dihedral_mean(model, x).clamp(0, 1)
    torch.testing.assert_close(ens, oracle, rtol=0, atol=1e-12)
    assert (ens - restore(model, x)).abs().max() > 1e-3
    x = torch.rand(1, 3, 14, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    tiled = restore(model, x, self_ensemble=True, tile=10, tile_overlap=8)
    torch.testing.assert_close(tiled, restore(model, x, self_ensemble=True), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_output_shapes(scale):
    model = _tiny(f"tiny-sr-x{scale}")
    x = torch.rand(3, 10, 9)
    out = restore(model, x)  # scale taken from the model
    assert out.shape == (3, 10 * scale, 9 * scale)
    out_tiled = restore(model, x[None], tile=8, tile_overlap=4, scale=scale)
    assert out_tiled.shape == (1, 3, 10 * scale, 9 * scale)
    assert 0 <= out_tiled.min() and out_tiled.max() <= 1
    with pytest.raises(ValueError, match="scale"):
        restore(model, x, scale=1)


def test_output_range_dtype_device_and_mode():
    model = _tiny()
    model.train()
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64) * 1.4 - 0.2
    out = restore(model, x)
    assert out.dtype == torch.float64 and out.min() >= 0 and out.max() <= 1
    assert model.training  # the caller's mode is restored
    assert all(p.grad is None for p in model.parameters())


def test_bfloat16_autocast_on_cpu_is_close():
    model = _tiny()
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(7))
    full = restore(model, x)
    half = restore(model, x, dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    assert (half - full).abs().max() < 3e-2


class _Darken(nn.Module):
    """A grey 'model' that halves its input, optionally upscaling it by ``scale``."""

    def __init__(self, scale: int = 1):
        super().__init__()
        self.n_colors, self.scale = 1, scale

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") * 0.5 if self.scale > 1 else x * 0.5


@pytest.mark.parametrize("scale", [1, 2])
def test_restore_luma_restores_y_and_keeps_chroma(scale):
    rgb = torch.rand(2, 3, 10, 12).sub(0.5).mul(0.1).add(0.5)  # pale: in range after halving Y
    out = restore_luma(_Darken(scale), rgb, tile=None, scale=scale)
    assert out.shape == (2, 3, 10 * scale, 12 * scale)
    got, was = rgb_to_ycbcr(out), rgb_to_ycbcr(rgb)
    if scale == 1:
        assert torch.allclose(got[:, 0], was[:, 0] * 0.5, atol=1e-5)
        assert torch.allclose(got[:, 1:], was[:, 1:], atol=1e-5)
    else:  # chroma upscaled bicubically: the mean colour is kept
        assert torch.allclose(got[:, 1:].mean((2, 3)), was[:, 1:].mean((2, 3)), atol=2e-3)
    with pytest.raises(ValueError, match="image must be an RGB tensor"):
        restore_luma(_Darken(), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="restore_luma"):  # the plain restore names the way
        restore(create("fast-jpeg", backend="torch"), rgb)


def test_bad_inputs():
    model = _tiny()
    x = torch.rand(1, 3, 12, 12)
    with pytest.raises(ValueError, match=r"tile \(8\) must be larger than tile_overlap \(16\)"):
        restore(model, x, tile=8)
    with pytest.raises(ValueError, match="4 channels.*n_colors=3"):
        restore(model, torch.rand(1, 4, 12, 12))
    with pytest.raises(ValueError, match="image must be"):
        restore(model, torch.rand(12, 12))
    with pytest.raises(TypeError, match="floating"):
        restore(model, torch.zeros(1, 3, 12, 12, dtype=torch.uint8))
    with pytest.raises(TypeError, match="image"):
        restore(model, x.numpy())
    with pytest.raises(ValueError, match="dtype"):
        restore(model, x, dtype=torch.float64)
    with pytest.raises(ValueError, match="tile_overlap"):
        restore(model, x, tile=8, tile_overlap=-1)
    with pytest.raises(TypeError, match="tile"):
        restore(model, x, tile=8.0)


@pytest.mark.cuda
def test_half_precision_on_gpu():
    model = _tiny().cuda()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    full = restore(model, x)
    for dtype in (torch.float16, torch.bfloat16):
        half = restore(model, x, dtype=dtype, tile=16, tile_overlap=8)
        assert half.device == x.device and half.dtype == torch.float32
        assert (half - restore(model, x, tile=16, tile_overlap=8)).abs().max() < 3e-2
    assert (restore(model, x, tile=16, tile_overlap=8) - full).abs().mean() < 5e-3
