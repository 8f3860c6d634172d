"""Reading and writing images as float tensors in [0, 1] (Pillow underneath).

- :func:`load_image` -> [C, H, W] float32 in [0, 1]; C = 3 (RGB) or 1 (grey).
- :func:`save_image` writes 8-bit images atomically and never overwrites by surprise.
- :func:`list_images` lists the images of a folder; :func:`read_header` reads a file's size
  and format without decoding it, :func:`verify_image` decodes it fully; what a load loses
  (alpha, frames, bits, colour) is :meth:`ImageHeader.losses`, in words by :func:`loss_notes`.
- Files of more than :data:`MAX_PIXELS` pixels are refused unless :func:`allow_large_images`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .._files import atomic_write
from .._text import listing

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "ImageHeader",
    "allow_large_images",
    "image_channels",
    "list_images",
    "load_image",
    "loss_notes",
    "read_header",
    "read_image_array",
    "save_image",
    "verify_image",
]

#: Extensions (lower case) that :func:`list_images` picks up.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")

#: Files that declare more pixels than this are refused unless :func:`allow_large_images`: a
#: small file can declare any size and decode to gigabytes (a "decompression bomb"). Pillow's
#: default limit (89.5 Mpx, e.g. 9459 x 9459).
MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"}
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # 16-bit grey PNG/TIFF
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height

# What a load loses, in words (ImageHeader.losses); loss_notes groups the files by these.
LOSS_GREY_TO_RGB = "grey, replicated to 3 channels for a colour model"
LOSS_RGB_TO_GREY = "colour, converted to grey (Pillow luma) for a grey model"
LOSS_ALPHA = "alpha channel dropped (not composited)"
LOSS_FRAMES = "several frames, only the first is read"
LOSS_DEPTH = "16-bit colour, read with 8 bits per channel (Pillow's limit)"
LOSS_OUTPUT_DEPTH = "16-bit, the result is written with 8 bits"

_large_allowed = False
_pillow_limit_lock = threading.Lock()


@contextlib.contextmanager
def _pillow_limit(limit: int | None) -> Iterator[None]:
    """Pillow's own decompression-bomb limit set to ``limit`` within the block (a module
    global of Pillow, hence the lock)."""
    with _pillow_limit_lock:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@contextlib.contextmanager
def allow_large_images(allowed: bool = True) -> Iterator[None]:
    """Within the block (with ``allowed``), images above :data:`MAX_PIXELS` are read like
    any other (Pillow's own limit is lifted too)."""
    global _large_allowed
    if not allowed:
        yield
        return
    saved, _large_allowed = _large_allowed, True
    try:
        with _pillow_limit(None):
            yield
    finally:
        _large_allowed = saved


def _unreadable(path, reason) -> ValueError:
    return ValueError(f"cannot read image {str(path)!r}: {reason}")


def _too_large(path, width: int, height: int) -> ValueError:
    return _unreadable(
        path,
        f"it is {width} x {height} pixels ({width * height / 1e6:.0f} Mpx), above the {MAX_PIXELS / 1e6:.1f} Mpx "
        "limit that guards against decompression bombs (small files that decode to gigabytes); "
        "--allow-large-images reads it on purpose",
    )


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[Image.Image]:
    """``Image.open(path)`` (header read, nothing decoded) with our size limit, whose error
    says the size, instead of Pillow's; ValueError naming the path when it cannot be opened,
    or when reading it within the block fails (a truncated or damaged file)."""
    path = Path(path)
    if not path.is_file():
        raise _unreadable(path, "no such file" if not path.exists() else "not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our check below
            im = Image.open(path)
    except Image.DecompressionBombError:  # far above the limit: read the size only, to say it
        with _pillow_limit(None), Image.open(path) as im:
            raise _too_large(path, *im.size) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _unreadable(path, e) from None
    with im:
        if not _large_allowed and im.width * im.height > MAX_PIXELS:
            raise _too_large(path, im.width, im.height)
        try:
            yield im
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise _unreadable(path, e) from None


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says (:func:`read_header`): the size after the EXIF
    orientation, the channels :func:`load_image` sees (1 grey, 3 colour), whether there is
    an alpha channel, the bits per channel and the number of frames."""

    path: Path
    width: int
    height: int
    channels: int
    alpha: bool = False
    bits: int = 8
    frames: int = 1

    def losses(self, color: bool, *, writes_8bit: bool = False, keeps_colour: bool = False) -> tuple[str, ...]:
        """What ``load_image(path, color=color)`` drops or changes (``LOSS_*`` phrases); with
        ``writes_8bit`` also that a 16-bit input's result is saved with 8 bits; with
        ``keeps_colour`` a colour file is not turned grey (a grey model restores its luma)."""
        out = []
        if color and self.channels == 1:
            out.append(LOSS_GREY_TO_RGB)
        if not color and self.channels == 3 and not keeps_colour:
            out.append(LOSS_RGB_TO_GREY)
        if self.alpha:
            out.append(LOSS_ALPHA)
        if self.frames > 1:
            out.append(LOSS_FRAMES)
        if self.bits > 8 and self.channels == 3:
            out.append(LOSS_DEPTH)
        elif self.bits > 8 and writes_8bit:
            out.append(LOSS_OUTPUT_DEPTH)
        return tuple(out)


def _bits(im: Image.Image) -> int:
    """16 for 16-bit files (grey modes, or colour whose raw data is 16-bit: Pillow decodes
    those to 8 bits), else 8."""
    if im.mode in _WIDE_MODES:
        return 16
    raw = im.tile[0][3] if im.tile and len(im.tile[0]) > 3 else ""
    return 16 if isinstance(raw, str) and ";16" in raw else 8


def _orientation(im: Image.Image) -> int | None:
    """The EXIF orientation tag, read from the header alone: for a PNG ``getexif`` would
    decode the image to look for a chunk after it, so only the chunk before it counts."""
    if im.format != "PNG":
        return im.getexif().get(0x0112)
    exif = Image.Exif()
    if im.info.get("exif"):
        exif.load(im.info["exif"])
    return exif.get(0x0112)


def read_header(path: str | os.PathLike) -> ImageHeader:
    """The :class:`ImageHeader` of ``path``, reading only its header (nothing is decoded).
    Raises ValueError naming the path for a missing or unreadable file, or one above
    :data:`MAX_PIXELS` (with its size)."""
    with _open(path) as im:
        width, height = im.size
        if _orientation(im) in _ROTATED:
            width, height = height, width
        return ImageHeader(
            path=Path(path),
            width=width,
            height=height,
            channels=1 if im.mode in _GREY_MODES else 3,
            alpha="A" in im.getbands() or "transparency" in im.info,
            bits=_bits(im),
            frames=getattr(im, "n_frames", 1),
        )


def image_channels(path: str | os.PathLike) -> int:
    """1 for a grey image file, 3 for a colour one (alpha ignored), reading only its header.
    Raises ValueError naming the path when the file is missing or cannot be decoded."""
    return read_header(path).channels


def loss_notes(
    headers: Iterable[ImageHeader], color: bool, *, writes_8bit: bool = False, keeps_colour: bool = False
) -> list[str]:
    """One ``warning: ...`` line per kind of loss (:meth:`ImageHeader.losses`, whose keywords
    these are) among ``headers``, naming the files (the first three, then how many more)."""
    kinds: dict[str, list[str]] = {}
    for h in headers:
        for loss in h.losses(color, writes_8bit=writes_8bit, keeps_colour=keeps_colour):
            kinds.setdefault(loss, []).append(h.path.name)
    return [f"warning: {loss}: {listing(names)}" for loss, names in kinds.items()]


def _decode(path: str | os.PathLike) -> Image.Image:
    """The fully decoded image at ``path``, EXIF orientation applied (camera JPEGs store it
    there; viewers and OpenCV apply it); ValueError naming the path when it cannot be."""
    with _open(path) as im:
        out = ImageOps.exif_transpose(im)
        out.load()
    if out.mode == "F":
        raise _unreadable(path, "32-bit float images (mode 'F') are not supported")
    return out


def verify_image(path: str | os.PathLike) -> None:
    """Decode ``path`` fully (and discard it): ValueError naming the path when it cannot be
    (a truncated file passes :func:`read_header`, not this)."""
    _decode(path).close()


def read_image_array(path: str | os.PathLike, *, color: bool = True) -> np.ndarray:
    """Decode ``path`` into a numpy array [H, W, C] (C = 3 if ``color`` else 1), dtype
    uint8, or uint16 for 16-bit grey files. See :func:`load_image` for the conversions.
    Raises ValueError naming the path when the file is missing or cannot be decoded."""
    im = _decode(path)
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
