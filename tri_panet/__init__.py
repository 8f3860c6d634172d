"""tri_panet: fused pyramid attention (PANet) with Triton, and small restoration models.

The functional op is :func:`pyramid_attention` (``tri_panet.ops``); the block is
:class:`tri_panet.nn.PyramidAttention`; the networks are in ``tri_panet.models``.
"""

from . import models, nn, ops
from .ops import available_backends, pyramid_attention, register_backend

__version__ = "0.1.0"
__all__ = ["pyramid_attention", "available_backends", "register_backend", "ops", "nn", "models", "__version__"]
