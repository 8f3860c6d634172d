"""The order of the training samples: a pure function of (seed, step, rank, world size),
so that a resumed run trains on exactly the samples an uninterrupted one would."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..data.seeding import sample_generator
from .dataset import RestorationDataset

__all__ = ["EpochIndexed", "StepBatchSampler"]

#: What the permutation's generator has in the index slot of (seed, epoch, index): an index
#: beyond any epoch used here (5.9 M samples), so the order stream is apart from the samples'.
_ORDER_STREAM = 0x5A3B1E


class StepBatchSampler:
    """Batches of (epoch, index) for steps ``start``..``end``-1 of this rank.

    Step ``s`` takes global batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``
    from a permutation of ``range(length)`` seeded by (``seed``, epoch); rank ``r`` takes
    its ``batch_size`` slice of that global batch (rank-sharded sampling, every sample seen
    once per epoch across ranks). A pure function of the step: resuming needs no state.
    """

    def __init__(
        self, length: int, batch_size: int, *, seed: int, start: int, end: int, rank: int = 0, world_size: int = 1
    ):
        self.global_batch = batch_size * world_size
        if length < self.global_batch or length % self.global_batch:
            raise ValueError(f"length ({length}) must be a positive multiple of the global batch ({self.global_batch})")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.start, self.end, self.rank = start, end, rank
        self.steps_per_epoch = length // self.global_batch
        self._cached: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (a permutation of ``range(length)``)."""
        if self._cached is None or self._cached[0] != epoch:
            g = sample_generator(self.seed, epoch, _ORDER_STREAM)
            self._cached = (epoch, torch.randperm(self.length, generator=g))
        return self._cached[1]

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This rank's (epoch, index) pairs of ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        g0 = k * self.global_batch + self.rank * self.batch_size
        return [(epoch, int(i)) for i in self.permutation(epoch)[g0 : g0 + self.batch_size]]

    def __iter__(self):
        for s in range(self.start, self.end):
            yield self.batch(s)

    def __len__(self) -> int:
        return max(self.end - self.start, 0)


class EpochIndexed(Dataset):
    """``RestorationDataset`` indexed by (epoch, index), so that DataLoader workers (which
    hold copies of the dataset) draw the right epoch without shared state."""

    def __init__(self, dataset: RestorationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]
