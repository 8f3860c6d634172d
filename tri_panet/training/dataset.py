"""The training dataset: clean images in, (degraded input, clean target) patches out."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .._text import listing
from ..data.degradations import Degradation
from ..data.io import ImageHeader, array_to_tensor, list_images, read_header, read_image_array
from ..data.seeding import sample_generator
from ..tasks import SCALED_TASKS, get_task

__all__ = ["RestorationDataset"]


def _symmetric_crop(img: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """img[:, top:top+height, left:left+width] where rows/columns outside the image are
    mirrored (edge sample repeated), so crops larger than the image are defined."""

    def index(n: int, start: int, size: int) -> torch.Tensor:
        i = torch.arange(start, start + size)
        j = torch.remainder(i, 2 * n)
        return torch.where(j < n, j, 2 * n - 1 - j)

    h, w = img.shape[-2:]
    if 0 <= top and top + height <= h and 0 <= left and left + width <= w:
        return img[:, top : top + height, left : left + width]
    return img.index_select(1, index(h, top, height)).index_select(2, index(w, left, width))


class RestorationDataset(Dataset):
    """Pairs ``dict(input=degraded [C, h, w], target=clean [C, H, W])`` (float32 in [0, 1])
    made on the fly from a folder (or list of folders) of clean images.

    Args:
        root: folder or list of folders of images (see :func:`~tri_panet.data.io.list_images`).
        task: a key of :data:`tri_panet.tasks.TASKS` ("denoise", "jpeg", "demosaic", "sr").
        patch_size: side of the INPUT patch (for sr the target is patch_size * scale);
            ``None`` uses whole images (validation; use batch size 1), cropped to a
            multiple of ``scale`` for sr.
        color: RGB (3 channels) or grey (1 channel, Pillow luma; not for demosaic).
        degradation: a :class:`~tri_panet.data.degradations.Degradation` of ``task``
            (``tri_panet.tasks.make_degradation``). Default for the tasks without a
            level: demosaic -> the RGGB mosaic, sr -> MATLAB bicubic at ``scale``;
            denoise / jpeg need one (ValueError).
        scale: SR factor (2, 3 or 4) for sr, 1 otherwise; for sr it is taken from the
            degradation's ``scale`` when left at 1.
        augment: random horizontal/vertical flips and transposition (8 dihedral
            transforms) of the clean crop, before degrading (keeps the Bayer phase).
        seed: base seed; sample ``index`` of epoch ``e`` uses generator
            :func:`sample_generator` (seed, e, index) for crop, augmentation and
            degradation, so results do not depend on worker count or order.
        length: samples per epoch (default: one per image); sample i uses image
            i % number_of_images.
        cache: keep the decoded images in memory (uint8). With DataLoader workers each
            worker holds its own cache.

    Images smaller than the crop are padded by symmetric reflection (a warning names them
    once). Call :meth:`set_epoch` at the start of every epoch for fresh crops and noise.
    """

    def __init__(
        self,
        root: str | os.PathLike | Sequence[str | os.PathLike],
        task: str,
        *,
        patch_size: int | None = 48,
        color: bool = True,
        degradation: Degradation | None = None,
        scale: int = 1,
        augment: bool = True,
        seed: int = 0,
        length: int | None = None,
        cache: bool = True,
    ) -> None:
        spec = get_task(task)
        bad_patch = isinstance(patch_size, bool) or not isinstance(patch_size, Integral) or patch_size < 1
        if patch_size is not None and bad_patch:
            raise ValueError(f"patch_size must be a positive int or None, got {patch_size!r}")
        if isinstance(scale, bool) or not isinstance(scale, Integral):
            raise TypeError(f"scale must be an int, got {type(scale).__name__}")
        if not color and 1 not in (spec.degradation.channels or (1,)):
            raise ValueError(f"task {task!r} needs colour images (color=True)")
        if length is not None and (isinstance(length, bool) or not isinstance(length, Integral) or length < 1):
            raise ValueError(f"length must be a positive int or None, got {length!r}")
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if degradation is not None and not isinstance(degradation, Degradation):
            raise TypeError(f"degradation must be a Degradation (make_degradation), got {type(degradation).__name__}")

        if spec.scaled:
            if scale == 1 and degradation is not None:
                scale = degradation.scale
            if scale not in spec.scales:
                raise ValueError(f"scale must be one of {spec.scales} for task {task!r}, got {scale}")
            if degradation is not None and degradation.scale != scale:
                raise ValueError(f"scale {scale} differs from the degradation's scale {degradation.scale}")
        elif scale != 1:
            scaled = " / ".join(map(repr, SCALED_TASKS))
            raise ValueError(f"scale applies to task {scaled} only; got scale={scale} for task {task!r}")
        if degradation is None:
            if spec.level is not None:  # a level has no sensible default for training: blind or fixed?
                example = f"{spec.level.name}_range={spec.level.blind}"
                raise ValueError(f"task {task!r} needs a degradation, e.g. make_degradation({task!r}, {example})")
            degradation = spec.make_degradation(**spec.fixed_params(scale=scale))
        if degradation.task != task:
            raise ValueError(f"degradation is for task {degradation.task!r}, not {task!r}")

        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        if not roots:
            raise ValueError("root must name at least one folder")
        self.paths: list[Path] = [p for r in roots for p in list_images(r)]
        self.task = task
        self.patch_size = None if patch_size is None else int(patch_size)
        self.color = bool(color)
        self.degradation = degradation
        self.scale = int(scale)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.length = len(self.paths) if length is None else int(length)
        self.cache = bool(cache)
        self.epoch = 0
        self._cache: dict[int, np.ndarray] = {}
        self._warned_small: set[int] = set()

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops, transforms and noise ``__getitem__`` draws."""
        if isinstance(epoch, bool) or not isinstance(epoch, Integral) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def _array(self, i: int) -> np.ndarray:
        """The decoded image ``i`` (from the cache when caching)."""
        arr = self._cache.get(i)
        if arr is None:
            arr = read_image_array(self.paths[i], color=self.color)
            if self.cache:
                self._cache[i] = arr
        return arr

    def _image(self, i: int) -> torch.Tensor:
        return array_to_tensor(self._array(i))

    def check_images(self, *, progress: bool = False) -> list[ImageHeader]:
        """Decode every image once (filling the cache when caching), so that an unreadable
        file fails before training rather than when it is first sampled; ValueError naming
        every unreadable file. Returns their headers (what loading them loses:
        :func:`~tri_panet.data.io.loss_notes`). ``progress``: a bar on stderr when it takes
        more than two seconds."""
        from tqdm.auto import tqdm

        bad = []
        bar = tqdm(
            range(len(self.paths)),
            desc="checking images",
            unit="img",
            delay=2.0,
            leave=False,
            disable=not progress,
            file=sys.stderr,
        )
        for i in bar:
            try:
                self._array(i)
            except ValueError as e:
                bad.append(str(e).removeprefix("cannot read image "))
        if bad:
            listed = listing(bad, sep="; ")
            raise ValueError(f"{len(bad)} of {len(self.paths)} training images cannot be read: {listed}")
        return [read_header(p) for p in self.paths]

    def _crop(self, img: torch.Tensor, g: torch.Generator, i: int) -> torch.Tensor:
        h, w = img.shape[-2:]
        if self.patch_size is None:  # the whole image, cropped to a multiple of the SR factor
            if h < self.scale or w < self.scale:
                raise ValueError(f"image {str(self.paths[i])!r} ({h}x{w}) is smaller than scale {self.scale}")
            return img[:, : h - h % self.scale, : w - w % self.scale]
        size = self.patch_size * self.scale
        if (h < size or w < size) and i not in self._warned_small:
            self._warned_small.add(i)
            warnings.warn(
                f"image {str(self.paths[i])!r} ({h}x{w}) is smaller than the {size}x{size} crop; "
                "padding it by symmetric reflection",
                stacklevel=3,
            )
        top = int(torch.randint(0, max(h - size, 0) + 1, (), generator=g))
        left = int(torch.randint(0, max(w - size, 0) + 1, (), generator=g))
        return _symmetric_crop(img, top, left, size, size)

    def _augment(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        hflip, vflip, transpose = (torch.rand(3, generator=g) < 0.5).tolist()
        if hflip:
            img = img.flip(-1)
        if vflip:
            img = img.flip(-2)
        if transpose:
            img = img.transpose(-1, -2)
        return img.contiguous()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        index = index % self.length
        g = sample_generator(self.seed, self.epoch, index)
        i = index % len(self.paths)
        clean = self._crop(self._image(i), g, i)
        if self.augment:
            clean = self._augment(clean, g)
        clean = clean.contiguous()
        degraded = self.degradation(clean, g)
        return {"input": degraded.float().contiguous(), "target": clean.float()}

    def __repr__(self) -> str:
        return (
            f"RestorationDataset({len(self.paths)} images, task={self.task!r}, patch_size={self.patch_size}, "
            f"color={self.color}, scale={self.scale}, augment={self.augment}, seed={self.seed}, "
            f"length={self.length}, degradation={self.degradation!r})"
        )
