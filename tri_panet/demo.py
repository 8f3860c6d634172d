"""``tri-panet demo``: denoise a real photo with the bundled tiny model, no data needed.

A photo that ships inside scikit-image (``skimage.data.astronaut()`` by default) is
centre-cropped to a square, resized to ``size`` x ``size`` (Lanczos), given additive white
Gaussian noise of ``sigma`` (0-255 scale, fixed seed; the noisy image is not clipped or
quantised, as in the benchmarks), restored by ``load_pretrained("fast-denoise")``, and a
before/after picture (noisy | restored | clean, side by side) is written. The PSNR of the
noisy and the restored image (RGB, no border crop) and the restoration time are printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ._files import check_writable
from .cost import plan_restore
from .data.degradations import add_gaussian_noise
from .data.io import save_image
from .inference import restore
from .metrics import psnr
from .models import build_model, load_pretrained

__all__ = ["run_demo", "demo_image", "DEMO_IMAGES", "OUTPUT_NAME"]

#: Colour photos of ``skimage.data`` the demo can use.
DEMO_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
OUTPUT_NAME = "tri_panet_demo.png"
MODEL_NAME = "fast-denoise"


def demo_image(name: str = "astronaut", size: int = 256) -> torch.Tensor:
    """The scikit-image photo ``name`` as [3, size, size] float32 in [0, 1] (square centre
    crop, Lanczos resize, rounded to 8 bits)."""
    from PIL import Image
    from skimage import data

    if name not in DEMO_IMAGES:
        raise ValueError(f"image must be one of {', '.join(DEMO_IMAGES)}, got {name!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    arr = getattr(data, name)()
    h, w = arr.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    pil = Image.fromarray(arr[top : top + side, left : left + side, :3])
    if side != size:
        pil = pil.resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(pil).transpose(2, 0, 1).copy()).float() / 255.0


def _side_by_side(images: list[torch.Tensor], gap: int = 4) -> torch.Tensor:
    """[3, H, W] images next to each other, separated by white columns."""
    sep = torch.ones(3, images[0].shape[1], gap)
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(sep)
        parts.append(im.clamp(0, 1))
    return torch.cat(parts, dim=2)


def run_demo(
    out_dir: str | Path = ".",
    *,
    sigma: float = 25.0,
    size: int = 256,
    image: str = "astronaut",
    seed: int = 0,
    tile: int | str | None = 64,
    tile_overlap: int = 16,
    force: bool = False,
    weights: str | Path | None = None,
    device: str = "cpu",
    print_fn: Callable[[str], None] = print,
) -> dict:
    """Run the demo; returns dict(path, psnr_noisy, psnr_restored, seconds, size, sigma).

    ``tile``: restore in tiles of this side (64 by default: the attention cost grows with
    the square of the area, so tiles keep a 256 x 256 photo at a few seconds on 2 CPU
    cores); None or 0 for the whole image at once; ``"auto"`` as ``tri-panet restore``
    picks it (:func:`tri_panet.cost.plan_restore`, which also refuses a size that cannot
    fit in memory). ``weights``: a ``.safetensors`` file
    to use instead of the bundled ``fast-denoise`` weights. Raises FileNotFoundError
    (naming the missing file) when neither exists, FileExistsError when the picture exists
    and ``force`` is False. PSNR in dB (RGB, no border crop), ``seconds`` of restoration.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"output folder {str(out_dir)!r} does not exist")
    path = out_dir / OUTPUT_NAME
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    check_writable(path)  # before the work, not after it
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma <= 255:
        raise ValueError(f"sigma must be a number in [0, 255], got {sigma!r}")

    if weights is not None:
        model = build_model(weights=weights, task="denoise").eval()
    else:
        try:
            model = load_pretrained(MODEL_NAME)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e}. The demo needs the bundled {MODEL_NAME} weights (train them with `tri-panet train`, "
                "see docs/TRAINING.md) or a weights file: tri-panet demo --weights FILE"
            ) from None
    model = model.to(device)

    clean = demo_image(image, size)
    g = torch.Generator().manual_seed(seed)
    noisy = add_gaussian_noise(clean, sigma, generator=g)
    plan = plan_restore(model, torch.device(device), [(size, size)], tile or None, tile_overlap)
    tile = plan.tile if tile == "auto" else tile or None
    t0 = time.perf_counter()
    if tile is not None and tile >= size:
        tile = None  # one tile covers the photo
    restored = restore(model, noisy.to(device), tile=tile, tile_overlap=tile_overlap).cpu()
    seconds = time.perf_counter() - t0
    p_noisy = float(psnr(noisy, clean)[0])
    p_restored = float(psnr(restored, clean)[0])
    save_image(_side_by_side([noisy, restored, clean]), path, overwrite=force)
    print_fn(
        f"{image} {size}x{size}, AWGN sigma {sigma:g} (seed {seed}, not clipped): PSNR noisy {p_noisy:.2f} dB -> "
        f"restored {p_restored:.2f} dB ({p_restored - p_noisy:+.2f} dB) in {seconds:.2f} s on {device}"
        + (f" ({tile}x{tile} tiles)" if tile else "")
    )
    print_fn(f"wrote {path} (noisy | restored | clean)")
    return {
        "path": str(path),
        "psnr_noisy": p_noisy,
        "psnr_restored": p_restored,
        "seconds": seconds,
        "size": size,
        "sigma": float(sigma),
    }
