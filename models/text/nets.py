"""The text pair's architectures: a pre-LayerNorm transformer encoder, masked mean pooling and a
linear head, from ``input_ids`` and ``attention_mask`` (INT64 [batch, seq]) to ``logits``.

Written for ONNX export with every axis dynamic: attention splits and merges heads with
``unflatten``/``flatten`` (never a traced size; ``nn.MultiheadAttention`` traces fixed shapes),
positions come from a cumulative sum of ones and are encoded with sinusoids computed in the graph
(no table, so no maximum length). Padded positions are irrelevant: they are masked out of every
attention's keys and out of the pooling, and padding goes on the right, so a real token's
position never moves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.text.data import NUM_CLASSES, VOCAB_SIZE

MASKED = -1e9  # added to a padded key's score: its weight is exactly 0 after the softmax


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_width = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        # [b, s, 3w] -> three [b, heads, s, head_width]
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_width)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_width) + key_bias
        mixed = F.softmax(scores, dim=-1) @ v
        merged: torch.Tensor = self.out(mixed.transpose(1, 2).flatten(2))
        return merged


class Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads)
        self.feed_forward = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)
        )

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), key_bias)
        out: torch.Tensor = x + self.feed_forward(self.norm2(x))
        return out


class SequenceClassifier(nn.Module):
    frequencies: torch.Tensor  # a buffer: the sinusoids' angular frequencies

    def __init__(self, width: int, heads: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, width)
        frequencies = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.blocks = nn.ModuleList(Block(width, heads, hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = (torch.ones_like(input_ids).cumsum(1) - 1).to(torch.float32)
        angles = positions.unsqueeze(-1) * self.frequencies  # [b, s, w/2]
        x = self.embedding(input_ids) + torch.cat([angles.sin(), angles.cos()], dim=-1)
        mask = attention_mask.to(torch.float32)
        key_bias = ((1.0 - mask) * MASKED).unsqueeze(1).unsqueeze(1)  # [b, 1, 1, s]
        for block in self.blocks:
            x = block(x, key_bias)
        weights = mask.unsqueeze(-1)
        pooled = (self.norm(x) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        logits: torch.Tensor = self.head(pooled)
        return logits


def teacher_net() -> SequenceClassifier:
    """4 layers, width 128, 4 heads, feed-forward 512."""
    return SequenceClassifier(width=128, heads=4, hidden=512, layers=4)


def student_net() -> SequenceClassifier:
    """1 layer, width 32, 2 heads, feed-forward 64."""
    return SequenceClassifier(width=32, heads=2, hidden=64, layers=1)
