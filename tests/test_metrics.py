"""PSNR / SSIM against scikit-image, whose peak_signal_noise_ratio and
structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False) follow
the BasicSR / MATLAB conventions."""

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tri_panet.metrics import psnr, ssim


def _pair(h=40, w=52, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    clean = data.astronaut()[100 : 100 + h, 150 : 150 + w].astype(np.float64) / 255
    noisy = np.clip(clean + rng.normal(0, noise, clean.shape), 0, 1)
    return noisy, clean  # [H, W, 3]


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def _sk_ssim(x, y, data_range):
    return structural_similarity(
        x,
        y,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
        channel_axis=2,
    )


@pytest.mark.parametrize("crop", [0, 3])
@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_rgb_matches_skimage(crop, data_range):
    x, y = _pair()
    x, y = x * data_range, y * data_range
    got_p = psnr(_t(x), _t(y), crop_border=crop, data_range=data_range).item()
    got_s = ssim(_t(x), _t(y), crop_border=crop, data_range=data_range).item()
    xc = x[crop : x.shape[0] - crop, crop : x.shape[1] - crop]
    yc = y[crop : y.shape[0] - crop, crop : y.shape[1] - crop]
    assert got_p == pytest.approx(peak_signal_noise_ratio(yc, xc, data_range=data_range), rel=1e-9)
    assert got_s == pytest.approx(_sk_ssim(xc, yc, data_range), rel=1e-6)


@pytest.mark.parametrize("crop", [0, 4])
def test_y_channel_matches_skimage(crop):
    x, y = _pair(h=37, w=45, seed=1, noise=0.08)
    x = np.round(x * 255) / 255  # 8-bit values, as evaluated images usually are
    # Crop first, then convert (BasicSR order); skimage's rgb2ycbcr gives Y in [16, 235].
    xc = x[crop : x.shape[0] - crop, crop : x.shape[1] - crop]
    yc = y[crop : y.shape[0] - crop, crop : y.shape[1] - crop]
    xy = rgb2ycbcr(xc)[..., :1] / 255
    yy = rgb2ycbcr(yc)[..., :1] / 255
    got_p = psnr(_t(x), _t(y), crop_border=crop, y_channel=True).item()
    got_s = ssim(_t(x), _t(y), crop_border=crop, y_channel=True).item()
    assert got_p == pytest.approx(peak_signal_noise_ratio(yy, xy, data_range=1.0), rel=1e-9)
    assert got_s == pytest.approx(_sk_ssim(xy, yy, 1.0), rel=1e-6)
    # The same on the 0-255 scale.
    got255 = psnr(_t(x * 255), _t(y * 255), crop_border=crop, y_channel=True, data_range=255).item()
    assert got255 == pytest.approx(got_p, rel=1e-12)
    got255s = ssim(_t(x * 255), _t(y * 255), crop_border=crop, y_channel=True, data_range=255).item()
    assert got255s == pytest.approx(got_s, rel=1e-9)


def test_batch_gives_one_value_per_image_and_accepts_float32():
    pairs = [_pair(seed=s, noise=0.02 * (s + 1)) for s in range(3)]
    xs = torch.stack([_t(p[0]) for p in pairs]).float()
    ys = torch.stack([_t(p[1]) for p in pairs]).float()
    p, s = psnr(xs, ys), ssim(xs, ys)
    assert p.shape == (3,) and s.shape == (3,) and p.dtype == torch.float64
    for i in range(3):
        xi = xs[i].permute(1, 2, 0).double().numpy()
        yi = ys[i].permute(1, 2, 0).double().numpy()
        assert p[i].item() == pytest.approx(peak_signal_noise_ratio(yi, xi, data_range=1.0), rel=1e-9)
        assert s[i].item() == pytest.approx(_sk_ssim(xi, yi, 1.0), rel=1e-6)
    assert p[0] > p[1] > p[2]  # more noise, lower PSNR; a mean over the batch would hide this


def test_grey_and_three_dim_input():
    img = data.camera()[:48, :50].astype(np.float64) / 255
    noisy = np.clip(img + np.random.default_rng(2).normal(0, 0.1, img.shape), 0, 1)
    x, y = torch.from_numpy(noisy)[None], torch.from_numpy(img)[None]  # [1, H, W]
    assert psnr(x, y).shape == (1,)
    assert psnr(x, y).item() == pytest.approx(peak_signal_noise_ratio(img, noisy, data_range=1), rel=1e-9)
    want = structural_similarity(
        noisy, img, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
    )
    assert ssim(x, y).item() == pytest.approx(want, rel=1e-6)
    # One channel with y_channel=True is taken as Y already.
    assert psnr(x, y, y_channel=True).item() == pytest.approx(psnr(x, y).item())


def test_identical_images():
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))


def test_known_psnr_value():
    # MSE = 0.1^2 everywhere -> PSNR = 20 dB exactly.
    y = torch.full((1, 1, 12, 12), 0.5, dtype=torch.float64)
    assert psnr(y + 0.1, y).item() == pytest.approx(20.0, abs=1e-9)
    assert psnr((y + 0.1) * 255, y * 255, data_range=255).item() == pytest.approx(20.0, abs=1e-9)


def test_crop_really_removes_border():
    y = torch.rand(1, 3, 20, 20, dtype=torch.float64)
    x = y.clone()
    x[..., :2, :] = 1 - x[..., :2, :]  # damage only the top two rows
    assert math.isinf(psnr(x, y, crop_border=2).item())
    assert math.isfinite(psnr(x, y, crop_border=1).item())


def test_errors():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, torch.rand(1, 3, 16, 15))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        psnr(torch.rand(16, 16), torch.rand(16, 16))
    with pytest.raises(ValueError, match="crop_border"):
        psnr(x, x, crop_border=8)
    with pytest.raises(ValueError, match="crop_border"):
        ssim(x, x, crop_border=-1)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x, x, crop_border=3)
    with pytest.raises(ValueError, match="y_channel"):
        psnr(torch.rand(1, 2, 16, 16), torch.rand(1, 2, 16, 16), y_channel=True)
    with pytest.raises(ValueError, match="data_range"):
        ssim(x, x, data_range=0)
    with pytest.raises(TypeError, match="pred"):
        psnr(x.numpy(), x)
