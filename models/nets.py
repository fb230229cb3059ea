"""The teacher and the students' architectures. All take raw 0..16 pixels; the scaling to 0..1
lives inside the graph."""

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
    return mlp((hidden,))


def mlp(hidden: tuple[int, ...]) -> nn.Module:
    """64 -> hidden[0] -> ... -> 10 with ReLUs between, pixels scaled inside the graph."""
    layers: list[nn.Module] = [_ScalePixels()]
    width = NUM_PIXELS
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


STUDENT_ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "mlp16": (16,),  # 1.2 k parameters
    "mlp32": (32,),  # 2.4 k: the shipped student's
    "mlp64x32": (64, 32),  # 6.5 k: deeper
    "mlp128x64": (128, 64),  # 17.3 k: the widest, still 1/65 of the teacher
}
"""The sweep's students by name; every one is at most 1/20 of the teacher's parameters."""


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
