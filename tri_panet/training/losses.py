"""The training losses, by the name ``TrainConfig.loss`` gives: mean over all elements of
(output, target), both [N, C, H, W] in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["CHARBONNIER_EPS", "LOSSES", "charbonnier_loss"]

#: Charbonnier's epsilon: sqrt(d^2 + eps^2) is L1 above |d| ~ 1e-3 (a quarter of an 8-bit level).
CHARBONNIER_EPS = 1e-3


def charbonnier_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean sqrt((output - target)^2 + CHARBONNIER_EPS^2): L1, smoothed at 0."""
    return torch.sqrt((output - target).square() + CHARBONNIER_EPS**2).mean()


#: name -> loss(output, target); the names TrainConfig.loss accepts.
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": F.l1_loss,
    "charbonnier": charbonnier_loss,
}
