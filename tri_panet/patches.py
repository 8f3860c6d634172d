"""Patch extraction and pasting (im2col / col2im) with the op's zero "same" padding.

Every backend forms query, key and value patches the same way: a k x k window around
each position of a map zero-padded by r = k // 2, flattened channel-major
(c, dy, dx) exactly like ``torch.nn.functional.unfold``. Pasting is the adjoint
(``fold``), which is also the gradient of extraction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def extract_patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """All k x k patches of ``x`` [B, C, H, W], zero-padded: returns [B, H*W, C*k*k]."""
    cols = F.unfold(x, patch_size, padding=patch_size // 2)
    return cols.transpose(1, 2)


def paste_patches(patches: torch.Tensor, size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Overlap-add patches [B, H*W, C*k*k] back onto a [B, C, H, W] map (col2im).

    Contributions that fall into the padding border are dropped; this is the adjoint
    of :func:`extract_patches`.
    """
    return F.fold(patches.transpose(1, 2), size, patch_size, padding=patch_size // 2)
