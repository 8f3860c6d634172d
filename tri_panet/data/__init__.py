"""Images in and out, the degradations of the four restoration tasks, and a dataset.

- :mod:`tri_panet.data.io`: ``load_image``, ``save_image``, ``list_images``.
- :mod:`tri_panet.data.degradations`: AWGN, JPEG, Bayer mosaic, MATLAB bicubic, RGB -> Y,
  the classical baselines and ``make_degradation``.
- :mod:`tri_panet.data.dataset`: ``RestorationDataset`` (random crops, flips, on-the-fly
  degradation, deterministic under a seed).
"""

from .dataset import RestorationDataset, sample_generator
from .degradations import (
    SR_SCALES,
    TASKS,
    Degradation,
    add_gaussian_noise,
    bayer_masks,
    bayer_mosaic,
    bicubic_downsample,
    bicubic_upsample,
    bilinear_demosaic,
    jpeg_compress,
    make_degradation,
    modcrop,
    quantize,
    rgb_to_y,
)
from .io import IMAGE_EXTENSIONS, list_images, load_image, save_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "SR_SCALES",
    "TASKS",
    "Degradation",
    "RestorationDataset",
    "add_gaussian_noise",
    "bayer_masks",
    "bayer_mosaic",
    "bicubic_downsample",
    "bicubic_upsample",
    "bilinear_demosaic",
    "jpeg_compress",
    "list_images",
    "load_image",
    "make_degradation",
    "modcrop",
    "quantize",
    "rgb_to_y",
    "sample_generator",
    "save_image",
]
