"""The two architectures. Both take raw 0..16 pixels; the scaling to 0..1 lives inside the graph."""

from __future__ import annotations

import torch
from torch import nn

NUM_PIXELS = 64
NUM_CLASSES = 10
PIXEL_MAX = 16.0


class _ScalePixels(nn.Module):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels / PIXEL_MAX


def teacher_net(hidden: int = 1024, dropout: float = 0.2) -> nn.Module:
    """A wide MLP: 64 -> 1024 -> 1024 -> 10, about 1.13 M parameters."""
    return nn.Sequential(
        _ScalePixels(),
        nn.Linear(NUM_PIXELS, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, NUM_CLASSES),
    )


def student_net(hidden: int = 32) -> nn.Module:
    """A narrow MLP: 64 -> 32 -> 10, about 2.4 k parameters (under 1/20 of the teacher's)."""
    return nn.Sequential(
        _ScalePixels(),
        nn.Linear(NUM_PIXELS, hidden),
        nn.ReLU(),
        nn.Linear(hidden, NUM_CLASSES),
    )


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
