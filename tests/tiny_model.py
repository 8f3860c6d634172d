"""The tiny model configuration the CLI, training and evaluation tests share."""

import torch

from tri_panet.models import create, save_weights

#: A tiny-denoise small enough for CPU tests: 8 features, 2 ResBlocks, a 2-level pyramid.
TINY = {"n_feats": 8, "n_resblocks": 2, "scales": [1.0, 0.5]}


def save_tiny_denoiser(folder):
    """Write a tiny denoiser whose tail is not zero (so it is not the identity); returns its path."""
    torch.manual_seed(1)
    model = create("tiny-denoise", **TINY)
    with torch.no_grad():
        model.tail[0].weight.normal_(0, 1e-2)
    return save_weights(model, folder / "tiny.safetensors")
