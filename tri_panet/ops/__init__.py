"""The pyramid attention op: the public function, its backends and how one is chosen.

Top-down: :func:`pyramid_attention` (``api.py``) checks its arguments and asks ``backends.py``
for the implementation of ``backend`` (one table, name -> function; "auto" explained by
:func:`explain_backend`). The implementations are the naive ``reference.py``, the tiled
``torch_tiled.py`` and the Triton ``triton_launcher.py`` (configs in ``triton_configs.py``,
kernels in ``tri_panet.kernels``); the last two run as ``torch.library`` custom ops built by
``custom_op.py``.
"""

from .api import pyramid_attention
from .backends import (
    BackendChoice,
    available_backends,
    explain_backend,
    register_backend,
    resolve_backend,
)
from .reference import pyramid_attention_reference
from .torch_tiled import DEFAULT_TILE_BYTES, pyramid_attention_torch, tile_budget

__all__ = [
    "pyramid_attention",
    "available_backends",
    "explain_backend",
    "resolve_backend",
    "register_backend",
    "BackendChoice",
    "pyramid_attention_reference",
    "pyramid_attention_torch",
    "tile_budget",
    "DEFAULT_TILE_BYTES",
]
