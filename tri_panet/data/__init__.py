"""Images in and out, and the degradations of the restoration tasks.

- :mod:`tri_panet.data.io`: ``load_image``, ``save_image``, ``list_images``.
- :mod:`tri_panet.data.image`: tensor checks, ``quantize`` (8 bits), ``modcrop``.
- :mod:`tri_panet.data.degradations`: AWGN, JPEG, Bayer mosaic, RGB -> Y and JFIF YCbCr, bilinear
  demosaicing, and the :class:`Degradation` objects of the tasks
  (``tri_panet.tasks.make_degradation`` builds them by task name).
- :mod:`tri_panet.data.matlab_resize`: MATLAB ``imresize`` bicubic (SR inputs and baseline).
- :mod:`tri_panet.data.seeding`: ``sample_generator``, the per-sample random streams.

The training dataset is :class:`tri_panet.training.dataset.RestorationDataset`.
"""

from .degradations import (
    BayerMosaic,
    BicubicDownsampling,
    Degradation,
    GaussianNoise,
    JPEGCompression,
    add_gaussian_noise,
    bayer_masks,
    bayer_mosaic,
    bilinear_demosaic,
    cfa_to_mosaic,
    jpeg_compress,
    rgb_to_y,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)
from .image import modcrop, quantize
from .io import IMAGE_EXTENSIONS, image_channels, list_images, load_image, save_image
from .matlab_resize import bicubic_downsample, bicubic_upsample
from .seeding import sample_generator

__all__ = [
    "IMAGE_EXTENSIONS",
    "BayerMosaic",
    "BicubicDownsampling",
    "Degradation",
    "GaussianNoise",
    "JPEGCompression",
    "add_gaussian_noise",
    "bayer_masks",
    "bayer_mosaic",
    "bicubic_downsample",
    "bicubic_upsample",
    "bilinear_demosaic",
    "cfa_to_mosaic",
    "image_channels",
    "jpeg_compress",
    "list_images",
    "load_image",
    "modcrop",
    "quantize",
    "rgb_to_y",
    "rgb_to_ycbcr",
    "sample_generator",
    "save_image",
    "ycbcr_to_rgb",
]
