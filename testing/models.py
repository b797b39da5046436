"""Small building blocks for test and benchmark models, shared so each is defined once."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """A ResNet basic block: conv → BN → ReLU → conv → BN, plus its input, then ReLU.

    The residual add ties the block's output channels to its input's, the coupling a
    structured-pruning pass must keep consistent (and a quantizer must see through)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(channels)
        self.c2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
