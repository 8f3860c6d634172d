"""Classical baselines: each runs on a tiny image, restores it better than the degraded input
where that is the point, and a missing optional package gives one clear error."""

import sys

import pytest
import torch

from tri_panet import baselines
from tri_panet.data.degradations import bayer_mosaic
from tri_panet.metrics import psnr


def _smooth_image(size: int = 32) -> torch.Tensor:
    """A smooth colour image [3, size, size] in [0.1, 0.9] (classical methods do well on it)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([0.5 + 0.4 * torch.sin(3 * x), 0.5 + 0.4 * torch.cos(2 * y), 0.3 + 0.5 * x * y])


def _needs(package: str):
    return pytest.importorskip(package, reason=f"optional baseline package {package} not installed")


@pytest.mark.parametrize("name", ["nlm", "cbm3d"])
def test_denoisers_reduce_noise(name):
    if name == "cbm3d":
        _needs("bm3d")
    clean = _smooth_image()
    noisy = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * 25 / 255
    out = baselines.get_baseline(name, "denoise").run(noisy, {"sigma": 25.0})
    assert out.shape == clean.shape and out.dtype == clean.dtype
    assert psnr(out[None], clean[None]) > psnr(noisy.clamp(0, 1)[None], clean[None]) + 3


def test_cbm3d_runs_on_torch_s_threads(monkeypatch):
    bm3d = _needs("bm3d")
    seen = []
    monkeypatch.setattr(bm3d, "bm3d_rgb", lambda z, sigma, profile: seen.append(profile.num_threads) or z)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    baselines.get_baseline("cbm3d", "denoise").run(_smooth_image(8), {"sigma": 25.0})
    assert seen == [1]  # the package's default, 0, would use every core while the model gets one


def test_denoiser_at_sigma_zero_returns_input():
    clean = _smooth_image(8)
    assert torch.equal(baselines.get_baseline("nlm").run(clean, {"sigma": 0.0}), clean)


@pytest.mark.parametrize("name", ["bilinear", "menon2007"])
def test_demosaicers_use_the_rggb_layout(name):
    """A wrong Bayer layout (e.g. BGGR) would swap red and blue: PSNR far below 30 dB."""
    if name == "menon2007":
        _needs("colour_demosaicing")
    clean = _smooth_image()
    out = baselines.get_baseline(name, "demosaic").run(bayer_mosaic(clean), {})
    assert out.shape == clean.shape
    assert psnr(out[None], clean[None]) > 30


def test_jpeg_and_bicubic_baselines():
    img = _smooth_image(12)
    assert torch.equal(baselines.get_baseline("jpeg", "jpeg").run(img, {}), img)
    up = baselines.get_baseline("bicubic", "sr").run(img, {"scale": 3})
    assert up.shape == (3, 36, 36)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # what an absent package looks like to import
    with pytest.raises(baselines.BaselineUnavailable, match=r'pip install "tri_panet\[baselines\]"'):
        baselines.get_baseline("cbm3d")


def test_bad_names_and_tasks():
    with pytest.raises(ValueError, match="baseline must be one of"):
        baselines.get_baseline("bm4d")
    with pytest.raises(ValueError, match="is for denoise, not sr; for sr: bicubic"):
        baselines.get_baseline("nlm", "sr")
    with pytest.raises(ValueError, match="needs the noise level"):
        baselines.get_baseline("nlm").run(_smooth_image(8), {})
