"""Classical restoration methods to compare the models with, on exactly the same inputs.

Each :class:`Baseline` takes a degraded image [C, H, W] in [0, 1] (what the model gets) and
the degradation's parameters (``{"sigma": 25.0}`` for AWGN), and returns its restoration
[C, H * scale, W * scale] in [0, 1]. Two come from optional packages, installed with
``pip install "tri_panet[baselines]"``:

- ``cbm3d``: colour BM3D, ``bm3d.bm3d_rgb`` with the true sigma (grey images: ``bm3d.bm3d``).
  The ``bm3d`` package is licensed for non-commercial use only, which is why it is an
  optional extra for evaluation and never a dependency of the library.
- ``menon2007``: Menon et al. 2007 demosaicing (``colour-demosaicing``, Bayer RGGB).

The others need nothing beyond the library's own dependencies: ``nlm`` (scikit-image
non-local means, fast mode, true sigma), ``bilinear`` (bilinear demosaicing), ``jpeg``
(the JPEG input itself) and ``bicubic`` (MATLAB-style bicubic upsampling).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

#: The pip extra that installs the optional baselines.
EXTRA = "baselines"


class BaselineUnavailable(RuntimeError):
    """A baseline's package is not installed; the message says what to install."""


@dataclass(frozen=True)
class Baseline:
    """One classical method: ``run(degraded [C, H, W], params) -> restored``."""

    name: str
    task: str
    label: str  # column title in reports
    package: str | None  # module an optional extra provides, None when always available
    run: Callable[[torch.Tensor, dict], torch.Tensor]


def _import(module: str, baseline: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise BaselineUnavailable(
            f'baseline {baseline!r} needs the package {module!r}: pip install "tri_panet[{EXTRA}]" ({error})'
        ) from None


def _to_numpy(img: torch.Tensor) -> np.ndarray:
    """[C, H, W] tensor -> [H, W, C] float64 array."""
    return img.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()


def _to_tensor(arr: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """[H, W, C] or [H, W] array -> [C, H, W] tensor on ``like``'s device and dtype, clipped to [0, 1]."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.clip(arr, 0.0, 1.0)).permute(2, 0, 1).to(like.device, like.dtype).contiguous()


def _sigma(params: dict, baseline: str) -> float:
    sigma = params.get("sigma")
    if sigma is None:
        raise ValueError(f"baseline {baseline!r} needs the noise level: params must hold 'sigma' (0-255 scale)")
    return float(sigma)


def cbm3d(noisy: torch.Tensor, params: dict) -> torch.Tensor:
    """BM3D with the true noise level (``bm3d_rgb`` for colour, ``bm3d`` for grey), the
    package's default profile on as many threads as torch has (eval's ``--threads``), so
    that its time compares with the model's."""
    bm3d = _import("bm3d", "cbm3d")
    sigma = _sigma(params, "cbm3d") / 255.0
    if sigma == 0:
        return noisy.clamp(0, 1)
    profile = bm3d.BM3DProfile()  # what profile="np" selects, but with threads: 0 would take every core
    profile.num_threads = torch.get_num_threads()
    z = _to_numpy(noisy)
    out = bm3d.bm3d_rgb(z, sigma, profile) if z.shape[2] == 3 else bm3d.bm3d(z[:, :, 0], sigma, profile)
    return _to_tensor(out, noisy)


def nlm(noisy: torch.Tensor, params: dict) -> torch.Tensor:
    """scikit-image non-local means, fast mode, 5x5 patches, search 13x13, h = 0.8 sigma."""
    from skimage.restoration import denoise_nl_means

    sigma = _sigma(params, "nlm") / 255.0
    if sigma == 0:
        return noisy.clamp(0, 1)
    z = _to_numpy(noisy)
    out = denoise_nl_means(
        z, patch_size=5, patch_distance=6, h=0.8 * sigma, sigma=sigma, fast_mode=True, channel_axis=-1
    )
    return _to_tensor(out, noisy)


def menon2007(mosaic: torch.Tensor, params: dict) -> torch.Tensor:
    """Menon 2007 demosaicing of a 3-channel RGGB mosaic (unsampled entries zero)."""
    colour_demosaicing = _import("colour_demosaicing", "menon2007")
    cfa = _to_numpy(mosaic).sum(axis=2)  # one sample per pixel, the others are zero
    return _to_tensor(colour_demosaicing.demosaicing_CFA_Bayer_Menon2007(cfa, "RGGB"), mosaic)


def bilinear(mosaic: torch.Tensor, params: dict) -> torch.Tensor:
    """Bilinear demosaicing (the model's own classical input, ``bilinear_demosaic``)."""
    from .data.degradations import bilinear_demosaic

    return bilinear_demosaic(mosaic).clamp(0, 1)


def jpeg_input(decoded: torch.Tensor, params: dict) -> torch.Tensor:
    """The decoded JPEG itself: what a user has without a model."""
    return decoded.clamp(0, 1)


def bicubic(low_res: torch.Tensor, params: dict) -> torch.Tensor:
    """MATLAB-style bicubic upsampling by ``params["scale"]``."""
    from .data.matlab_resize import bicubic_upsample

    return bicubic_upsample(low_res, int(params["scale"]))


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("cbm3d", "denoise", "CBM3D", "bm3d", cbm3d),
        Baseline("nlm", "denoise", "NLM", None, nlm),
        Baseline("menon2007", "demosaic", "Menon07", "colour_demosaicing", menon2007),
        Baseline("bilinear", "demosaic", "bilinear", None, bilinear),
        Baseline("jpeg", "jpeg", "JPEG", None, jpeg_input),
        Baseline("bicubic", "sr", "bicubic", None, bicubic),
    )
}


def get_baseline(name: str, task: str | None = None) -> Baseline:
    """The baseline called ``name``; checks that it suits ``task`` and that its package is installed."""
    if name not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {name!r}")
    baseline = BASELINES[name]
    if task is not None and baseline.task != task:
        choices = ", ".join(n for n, b in BASELINES.items() if b.task == task)
        raise ValueError(f"baseline {name!r} is for {baseline.task}, not {task}; for {task}: {choices}")
    if baseline.package is not None:
        _import(baseline.package, name)
    return baseline
