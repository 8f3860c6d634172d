"""Degradations and baselines, each against an independent oracle where one exists."""

import io
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data
from skimage.color import rgb2ycbcr

from tri_panet.data import (
    add_gaussian_noise,
    bayer_mosaic,
    bicubic_downsample,
    bicubic_upsample,
    bilinear_demosaic,
    jpeg_compress,
    modcrop,
    quantize,
    rgb_to_y,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)
from tri_panet.tasks import make_degradation


def _photo(h=40, w=48, dtype=torch.float32):
    a = data.astronaut()[60 : 60 + h, 200 : 200 + w]
    return torch.from_numpy(a.copy()).permute(2, 0, 1).to(dtype) / 255


# ----------------------------------------------------------------------------- noise


def test_noise_statistics():
    img = torch.full((3, 200, 200), 0.5)
    out = add_gaussian_noise(img, 25, generator=torch.Generator().manual_seed(0))
    diff = (out - img).double()
    assert diff.std().item() == pytest.approx(25 / 255, rel=0.01)
    assert abs(diff.mean().item()) < 4 * (25 / 255) / diff.numel() ** 0.5
    # Not clipped by default: noise pushes some values of a dark image below zero.
    dark = add_gaussian_noise(torch.zeros(1, 64, 64), 25, generator=torch.Generator().manual_seed(1))
    assert dark.min() < 0
    clipped = add_gaussian_noise(torch.zeros(1, 64, 64), 25, generator=torch.Generator().manual_seed(1), clip=True)
    assert clipped.min() == 0 and torch.equal(clipped, dark.clamp(0, 1))


def test_noise_determinism_shapes_dtypes():
    img = _photo()
    a = add_gaussian_noise(img, 15, generator=torch.Generator().manual_seed(7))
    b = add_gaussian_noise(img, 15, generator=torch.Generator().manual_seed(7))
    c = add_gaussian_noise(img, 15, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == img.shape and a.dtype == torch.float32
    d64 = add_gaussian_noise(img.double(), 15, generator=torch.Generator().manual_seed(7))
    assert d64.dtype == torch.float64
    batch = add_gaussian_noise(img.expand(2, -1, -1, -1), 15, generator=torch.Generator().manual_seed(7))
    assert batch.shape == (2, *img.shape) and not torch.equal(batch[0], batch[1])
    assert torch.equal(add_gaussian_noise(img, 0), img)
    with pytest.raises(ValueError, match="sigma"):
        add_gaussian_noise(img, -1)
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        add_gaussian_noise(img[0], 10)
    with pytest.raises(TypeError, match="floating"):
        add_gaussian_noise((img * 255).to(torch.uint8), 10)


# ----------------------------------------------------------------------------- JPEG


def _pillow_jpeg(arr_u8, quality):
    buf = io.BytesIO()
    mode = "L" if arr_u8.ndim == 2 else "RGB"
    Image.fromarray(arr_u8, mode=mode).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode))


def test_jpeg_matches_pillow_colour_and_grey():
    img = quantize(_photo())
    arr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    out = jpeg_compress(img, 20)
    want = torch.from_numpy(_pillow_jpeg(arr, 20).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(out, want)
    grey = img[:1]
    out_g = jpeg_compress(grey, 30)
    want_g = torch.from_numpy(_pillow_jpeg(arr[..., 0].copy(), 30).copy())[None].float() / 255
    assert out_g.shape == grey.shape and torch.equal(out_g, want_g)


def test_jpeg_properties():
    img = quantize(_photo())
    q10 = jpeg_compress(img, 10)
    q90 = jpeg_compress(img, 90)
    assert q10.dtype == img.dtype and q10.shape == img.shape
    assert torch.allclose(q10 * 255, (q10 * 255).round(), atol=1e-4)  # decoded 8-bit values
    err10, err90 = (q10 - img).abs().mean(), (q90 - img).abs().mean()
    assert err10 > 0.01 and err90 < err10  # lower quality, larger error
    # Re-compressing at the same quality changes far less than the first pass.
    again = jpeg_compress(q10, 10)
    assert (again - q10).abs().mean() < 0.3 * err10
    batch = jpeg_compress(torch.stack([img, img.flip(-1)]), 10)
    assert torch.equal(batch[0], q10) and batch.shape == (2, *img.shape)
    for bad in (0, 101):
        with pytest.raises(ValueError, match="quality"):
            jpeg_compress(img, bad)
    with pytest.raises(TypeError, match="quality"):
        jpeg_compress(img, 50.5)
    with pytest.raises(ValueError, match="channels"):
        jpeg_compress(torch.rand(2, 8, 8), 50)


# ----------------------------------------------------------------------------- Bayer


def test_bayer_mosaic_pattern_exact():
    img = torch.rand(3, 5, 7)
    m = bayer_mosaic(img)
    assert m.shape == img.shape
    for y in range(5):
        for x in range(7):
            keep = {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 2}[(y % 2, x % 2)]
            for c in range(3):
                assert m[c, y, x] == (img[c, y, x] if c == keep else 0)
    assert torch.equal(bayer_mosaic(img[None])[0], m)
    with pytest.raises(ValueError, match="3 channels"):
        bayer_mosaic(torch.rand(1, 4, 4))


def test_bilinear_demosaic_exact_on_affine_image_interior():
    # Bilinear interpolation reproduces an affine function exactly away from the border.
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(14.0), indexing="ij")
    img = torch.stack([0.1 + 0.02 * yy + 0.01 * xx, 0.3 + 0.01 * yy - 0.005 * xx, 0.2 + 0.03 * xx]).double()
    out = bilinear_demosaic(bayer_mosaic(img))
    assert out.shape == img.shape and out.dtype == img.dtype
    assert torch.allclose(out[:, 1:-1, 1:-1], img[:, 1:-1, 1:-1], atol=1e-12)
    # Sampled values are kept everywhere, border included.
    mosaic = bayer_mosaic(img)
    sampled = mosaic != 0
    assert torch.equal(out[sampled], img[sampled])
    # The 1-channel raw CFA gives the same result.
    raw = mosaic.sum(0, keepdim=True)
    assert torch.allclose(bilinear_demosaic(raw[None])[0], out, atol=1e-12)


def test_bilinear_demosaic_matches_textbook_kernels():
    # Oracle: the classical convolution kernels on the zero-filled planes (interior).
    img = _photo(20, 22, torch.float64)
    m = bayer_mosaic(img)
    kg = torch.tensor([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=torch.float64) / 4
    krb = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float64) / 4
    want = torch.cat([F.conv2d(m[None, c : c + 1], k[None, None]) for c, k in enumerate((krb, kg, krb))], 1)[0]
    assert torch.allclose(bilinear_demosaic(m)[:, 1:-1, 1:-1], want, atol=1e-12)
    assert (bilinear_demosaic(m) - img).abs().mean() < 0.05


# ----------------------------------------------------------------------------- bicubic


def _torch_imresize(img, scale, down):
    """Independent oracle: torch's antialiased bicubic (same a = -0.5 kernel) on an image
    padded symmetrically by 2 * scale first, then cropped back."""
    x = img[None].double()
    pad = 2 * scale if down else 2
    h, w = x.shape[-2:]

    def mirror(i, n):  # MATLAB 'symmetric': ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...
        return -1 - i if i < 0 else 2 * n - 1 - i if i >= n else i

    idx_h = torch.tensor([mirror(i, h) for i in range(-pad, h + pad)])
    idx_w = torch.tensor([mirror(i, w) for i in range(-pad, w + pad)])
    xp = x[..., idx_h, :][..., idx_w]
    if down:
        y = F.interpolate(xp, size=(h // scale + 4, w // scale + 4), mode="bicubic", antialias=True)[..., 2:-2, 2:-2]
    else:
        size = ((h + 2 * pad) * scale, (w + 2 * pad) * scale)
        c = pad * scale
        y = F.interpolate(xp, size=size, mode="bicubic", antialias=True)[..., c:-c, c:-c]
    return y[0]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_matches_torch_antialiased_oracle(scale):
    img = _photo(12 * scale, 10 * scale, torch.float64)
    down = bicubic_downsample(img, scale, clamp=False)
    assert down.shape == (3, 12, 10)
    assert torch.allclose(down, _torch_imresize(img, scale, True), atol=1e-6)
    small = _photo(9, 11, torch.float64)
    up = bicubic_upsample(small, scale, clamp=False)
    assert up.shape == (3, 9 * scale, 11 * scale)
    assert torch.allclose(up, _torch_imresize(small, scale, False), atol=1e-6)


def test_bicubic_shapes_modcrop_constant_dtype():
    img = _photo(33, 40)
    assert bicubic_downsample(img, 3).shape == (3, 11, 13)
    assert modcrop(img, 3).shape == (3, 33, 39)
    assert bicubic_downsample(img[None], 2).shape == (1, 3, 16, 20)
    assert bicubic_downsample(img, 2).dtype == torch.float32
    const = torch.full((1, 24, 24), 0.3)
    assert torch.allclose(bicubic_downsample(const, 4), torch.full((1, 6, 6), 0.3), atol=1e-6)
    assert torch.allclose(bicubic_upsample(const, 3), torch.full((1, 72, 72), 0.3), atol=1e-6)
    up = bicubic_upsample(img, 2)
    assert 0 <= up.min() and up.max() <= 1
    q = bicubic_downsample(img, 2, quantize=True)
    assert torch.allclose(q * 255, (q * 255).round(), atol=1e-4)
    with pytest.raises(ValueError, match="scale"):
        bicubic_downsample(img, 0)


def _load_u8(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).double() / 255


def test_bicubic_downsample_matches_set5_lr_files(shared_data):
    set5 = os.path.join(shared_data, "test", "Set5")
    if not os.path.isdir(os.path.join(set5, "LR_bicubic")):
        pytest.skip("Set5/LR_bicubic not present")
    names = sorted(f[:-4] for f in os.listdir(os.path.join(set5, "HR")) if f.endswith(".png"))
    assert names
    worst = {}
    for scale in (2, 3, 4):
        worst[scale] = 0.0
        for name in names:
            hr = _load_u8(os.path.join(set5, "HR", f"{name}.png"))
            lr = _load_u8(os.path.join(set5, "LR_bicubic", f"X{scale}", f"{name}x{scale}.png"))
            # MATLAB on uint8 (rounding after each pass): identical files.
            exact = bicubic_downsample(hr, scale, quantize=True)
            assert exact.shape == lr.shape
            assert torch.equal((exact * 255).round(), (lr * 255).round()), (name, scale)
            # The float path (MATLAB on double): within 2/255 once rounded to 8 bits and
            # within 2.5/255 before (butterfly x2 reaches 2.30/255).
            approx = bicubic_downsample(hr, scale)
            worst[scale] = max(worst[scale], (approx - lr).abs().max().item() * 255)
            assert (quantize(approx) - lr).abs().max().item() * 255 <= 2 + 1e-6
            assert (approx - lr).abs().mean().item() * 255 < 0.5
        assert worst[scale] < 2.5, worst


# ----------------------------------------------------------------------------- Y channel


def test_rgb_to_y_matches_skimage():
    img = _photo(dtype=torch.float64)
    y = rgb_to_y(img)
    want = rgb2ycbcr(img.permute(1, 2, 0).numpy())[..., 0] / 255
    assert y.shape == (1, 40, 48)
    assert np.allclose(y[0].numpy(), want, atol=1e-12)
    assert rgb_to_y(img[None]).shape == (1, 1, 40, 48)
    assert rgb_to_y(torch.zeros(3, 1, 1)).item() == pytest.approx(16 / 255)
    assert rgb_to_y(torch.ones(3, 1, 1)).item() == pytest.approx(235 / 255)
    with pytest.raises(ValueError, match="3, H, W"):
        rgb_to_y(torch.rand(1, 4, 4))


def test_ycbcr_is_pillows_jfif_and_inverts_exactly():
    img = _photo(dtype=torch.float64)
    pixels = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(pixels)
    mine = rgb_to_ycbcr(torch.from_numpy(pixels).permute(2, 0, 1).double() / 255) * 255
    want = torch.from_numpy(np.asarray(pil.convert("YCbCr"))).permute(2, 0, 1).double()
    assert (mine - want).abs().max() < 1.5  # Pillow truncates in fixed point: within one level
    luma = torch.from_numpy(np.asarray(pil.convert("L"))).double()  # the grey of grey models
    assert (mine[0] - luma).abs().max() <= 0.5 + 1e-9
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(img)), img, atol=1e-12)
    assert rgb_to_ycbcr(img[None]).shape == (1, 3, 40, 48)
    with pytest.raises(ValueError, match="img must be .*YCbCr"):
        ycbcr_to_rgb(torch.rand(1, 4, 4))


# ----------------------------------------------------------------------------- factory


def test_make_degradation_tasks():
    img = _photo()
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    dn = make_degradation("denoise", sigma=25)
    assert torch.equal(dn(img, g(3)), add_gaussian_noise(img, 25, generator=g(3)))
    jp = make_degradation("jpeg", quality=10)
    assert torch.equal(jp(img, g(0)), jpeg_compress(img, 10))
    dm = make_degradation("demosaic")
    assert torch.equal(dm(img), bayer_mosaic(img))
    sr = make_degradation("sr", scale=4)
    assert torch.equal(sr(img), bicubic_downsample(img, 4, quantize=True))
    assert sr.scale == 4 and sr.task == "sr"
    assert torch.equal(make_degradation("sr", scale=2, quantize=False)(img), bicubic_downsample(img, 2))


def test_make_degradation_blind_ranges():
    img = _photo(16, 16)
    blind = make_degradation("denoise", sigma_range=(5, 50))
    a, params_a = blind.apply(img, torch.Generator().manual_seed(1))
    sig_a = params_a[0]["sigma"]
    b, params_b = blind.apply(img, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and params_b[0]["sigma"] == sig_a
    sigmas = []
    for s in range(40):
        _, params = blind.apply(img, torch.Generator().manual_seed(s))
        sigmas.append(params[0]["sigma"])
    assert 5 <= min(sigmas) and max(sigmas) <= 50 and max(sigmas) - min(sigmas) > 20
    jq = make_degradation("jpeg", quality_range=(10, 12))
    qs = set()
    for s in range(30):
        _, params = jq.apply(img, torch.Generator().manual_seed(s))
        qs.add(params[0]["quality"])
    assert qs == {10, 11, 12}
    # A batch draws one parameter per image.
    _, params = blind.apply(torch.stack([img] * 4), torch.Generator().manual_seed(0))
    assert len({p["sigma"] for p in params}) == 4


@pytest.mark.parametrize(
    "task, kwargs, match",
    [
        ("blur", {}, "task"),
        ("denoise", {}, "exactly one"),
        ("denoise", {"sigma": 10, "sigma_range": (0, 5)}, "exactly one"),
        ("denoise", {"sigma": -1}, "sigma"),
        ("denoise", {"sigma_range": (30, 10)}, "low <= high"),
        ("denoise", {"sigma": 10, "quality": 20}, "does not apply"),
        ("jpeg", {}, "exactly one"),
        ("jpeg", {"quality": 0}, "1..100"),
        ("jpeg", {"quality": 101}, "1..100"),
        ("jpeg", {"quality_range": (5, 101)}, "1..100"),
        ("sr", {}, "needs scale"),
        ("sr", {"scale": 5}, "scale"),
        ("sr", {"scale": 1}, "scale"),
        ("demosaic", {"scale": 2}, "does not apply"),
        ("jpeg", {"quality": 10, "clip": True}, "clip"),
    ],
)
def test_make_degradation_errors(task, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_degradation(task, **kwargs)


def test_degradation_channel_checks():
    with pytest.raises(ValueError, match="3 channels"):
        make_degradation("demosaic")(torch.rand(1, 8, 8))
    assert make_degradation("jpeg", quality=50)(torch.rand(1, 8, 8)).shape == (1, 8, 8)
