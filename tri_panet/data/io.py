"""Reading and writing images as float tensors in [0, 1] (Pillow underneath).

- :func:`load_image` -> [C, H, W] float32 in [0, 1]; C = 3 (RGB) or 1 (grey).
- :func:`save_image` writes 8-bit images atomically and never overwrites by surprise.
- :func:`list_images` lists the images of a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .._files import atomic_write

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_image", "read_image_array", "save_image"]

#: Extensions (lower case) that :func:`list_images` picks up.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"}
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # 16-bit grey PNG/TIFF


def read_image_array(path: str | os.PathLike, *, color: bool = True) -> np.ndarray:
    """Decode ``path`` into a numpy array [H, W, C] (C = 3 if ``color`` else 1), dtype
    uint8, or uint16 for 16-bit grey files. See :func:`load_image` for the conversions.
    Raises ValueError naming the path when the file is missing or cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot read image {str(path)!r}: no such file")
    try:
        with Image.open(path) as im:
            # Camera JPEGs store their orientation in EXIF; apply it as viewers and OpenCV do.
            im = ImageOps.exif_transpose(im)
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}") from e
    if im.mode == "F":
        raise ValueError(f"cannot read image {str(path)!r}: 32-bit float images (mode 'F') are not supported")
    if im.mode in _WIDE_MODES:
        arr = np.asarray(im).astype(np.uint32).clip(0, 65535).astype(np.uint16)[..., None]
        return np.repeat(arr, 3, axis=2) if color else arr
    if color:
        # Grey is replicated to 3 channels; palette/CMYK/YCbCr are converted; alpha is dropped.
        arr = np.asarray(im.convert("RGB"))
    elif im.mode in _GREY_MODES:
        arr = np.asarray(im.convert("L"))[..., None]
    else:
        # Pillow's "L": ITU-R 601-2 luma, full range, L = (299 R + 587 G + 114 B) / 1000,
        # the same as OpenCV's IMREAD_GRAYSCALE (not the studio-range Y of rgb_to_y).
        arr = np.asarray(im.convert("RGB").convert("L"))[..., None]
    return np.ascontiguousarray(arr)


def array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """[H, W, C] uint8/uint16 array -> [C, H, W] float32 in [0, 1]."""
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32))
    return t.div_(scale)


def load_image(path: str | os.PathLike, *, color: bool = True) -> torch.Tensor:
    """Load an image file as a float32 tensor [C, H, W] in [0, 1].

    ``color=True``: 3 RGB channels; grey files are replicated, alpha is dropped (not
    composited), palette/CMYK images are converted by Pillow. ``color=False``: 1 channel;
    colour files become Pillow's "L" luma (ITU-R 601-2, full range:
    (299 R + 587 G + 114 B) / 1000, rounded to 8 bits; as OpenCV's IMREAD_GRAYSCALE).
    16-bit grey files keep their precision (divided by 65535). EXIF orientation is applied.
    Raises ValueError naming the path for a missing or unreadable file.
    """
    return array_to_tensor(read_image_array(path, color=color))


def _tensor_to_uint8(tensor: torch.Tensor) -> np.ndarray:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    t = tensor.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(
                f"tensor must be [C, H, W] or [1, C, H, W], got a batch of {t.shape[0]} (shape {tuple(t.shape)})"
            )
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3) or t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"tensor must be [C, H, W] or [1, C, H, W] with C = 1 or 3, got shape {tuple(tensor.shape)}")
    if t.dtype == torch.uint8:
        arr = t
    elif t.is_floating_point():
        t = t.to(torch.float64)
        if not torch.isfinite(t).all():
            raise ValueError("tensor must hold finite values in [0, 1], got NaN or inf")
        # Out-of-range values are clamped; rounding is half away from zero like quantize().
        arr = torch.floor(t.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    else:
        raise TypeError(f"tensor must be floating (values in [0, 1]) or uint8, got dtype {t.dtype}")
    return arr.permute(1, 2, 0).cpu().numpy()


def _format_for(path: Path) -> str:
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(
            f"cannot tell the image format of {str(path)!r} from its extension {ext!r} (use .png, .jpg, ...)"
        )
    return fmt


def save_image(
    tensor: torch.Tensor,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    quality: int = 95,
) -> Path:
    """Write ``tensor`` ([C, H, W] or [1, C, H, W], C = 1 or 3, floats in [0, 1] or uint8)
    as an 8-bit image whose format follows the extension of ``path`` (PNG is lossless;
    ``quality`` is used for JPEG/WebP). Values are clamped to [0, 1] and rounded.

    The file is written to a temporary file in the same directory and moved into place,
    so a reader never sees a partial file and no temporary is left behind on error.
    Raises FileExistsError if ``path`` exists and ``overwrite`` is False. Returns the path.
    """
    path = Path(path)
    fmt = _format_for(path)
    arr = _tensor_to_uint8(tensor)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist")
    pil = Image.fromarray(arr[..., 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
    options = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}
    atomic_write(path, lambda f: pil.save(f, format=fmt, **options), overwrite=overwrite)
    return path


def list_images(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Sorted paths of the image files in ``folder`` (extensions of IMAGE_EXTENSIONS, any
    case; hidden files skipped; sub-folders too when ``recursive``). Raises ValueError if
    ``folder`` is not a directory or holds no image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {str(folder)!r} does not exist or is not a directory")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = sorted(
        p for p in candidates if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not found:
        raise ValueError(
            f"no image files in {str(folder)!r} (looked for {', '.join(IMAGE_EXTENSIONS)}"
            f"{', recursively' if recursive else ''})"
        )
    return found
