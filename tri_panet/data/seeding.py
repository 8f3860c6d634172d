"""Seeded random streams: one generator per (seed, epoch, index), so that what a sample or
an evaluation image draws never depends on which process draws it, or in what order."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["sample_generator"]


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded from (``seed``, ``epoch``, ``index``) through numpy's
    SeedSequence, so that nearby triples give unrelated streams.

    Training sample ``index`` of ``epoch`` draws its crop, flips and degradation from it;
    evaluation image ``i`` uses (seed, 0, i).
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g
