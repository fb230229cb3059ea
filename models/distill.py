"""Training: the teacher on hard labels, the student by knowledge distillation, and the baseline.

The distillation loss is ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``
(Hinton et al., 2015); the T^2 factor keeps the soft term's gradients on the scale of the hard one.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.data import Split


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 400
    patience: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    net: nn.Module
    best_epoch: int
    validation_accuracy: float


def accuracy(net: nn.Module, split: Split) -> float:
    net.eval()
    with torch.no_grad():
        predictions = net(torch.from_numpy(split.x)).argmax(dim=1).numpy()
    return float((predictions == split.y).mean())


def distillation_loss(
    student_logits: torch.Tensor,
    soft_targets: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``soft_targets`` are the teacher's probabilities at ``temperature``."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    soft = F.kl_div(log_student, soft_targets, reduction="batchmean") * temperature**2
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


def train(
    make_net: Callable[[], nn.Module],
    train_split: Split,
    validation: Split,
    config: TrainConfig,
    loss_for_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> TrainResult:
    """Mini-batch Adam with early stopping on validation accuracy; returns the best weights.

    The seed is set before ``make_net()`` so initial weights, shuffling and dropout all repeat.

    ``loss_for_batch(logits, batch_indices)`` lets the caller pick hard, soft or mixed targets.
    """
    torch.manual_seed(config.seed)
    net = make_net()
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.from_numpy(train_split.x)
    optimizer = torch.optim.Adam(
        net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    best_accuracy, best_epoch, best_state = -1.0, -1, copy.deepcopy(net.state_dict())
    for epoch in range(config.epochs):
        net.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            indices = order[start : start + config.batch_size]
            optimizer.zero_grad()
            loss = loss_for_batch(net(x[indices]), indices)
            loss.backward()
            optimizer.step()
        validation_accuracy = accuracy(net, validation)
        if validation_accuracy > best_accuracy:
            best_accuracy, best_epoch = validation_accuracy, epoch
            best_state = copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
    net.load_state_dict(best_state)
    net.eval()
    return TrainResult(net=net, best_epoch=best_epoch, validation_accuracy=best_accuracy)


def hard_label_loss(labels: np.ndarray) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    targets = torch.from_numpy(labels)
    return lambda logits, indices: F.cross_entropy(logits, targets[indices])


def distilled_loss(
    labels: np.ndarray, soft_targets: np.ndarray, temperature: float, alpha: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    hard = torch.from_numpy(labels)
    soft = torch.from_numpy(soft_targets)
    return lambda logits, indices: distillation_loss(
        logits, soft[indices], hard[indices], temperature, alpha
    )


def soft_label_cache_key(teacher_id: str, dataset_hash: str, temperature: float) -> str:
    material = f"teacher={teacher_id};dataset={dataset_hash};T={temperature!r}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def soft_labels(
    teacher: nn.Module | Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    temperature: float,
    cache_path: Path,
) -> tuple[np.ndarray, bool]:
    """The teacher's softened probabilities on ``x``, computed once per cache key.

    ``teacher`` is a PyTorch net or any function from pixels to logits (the sweep's is the
    teacher's ONNX file). Returns the labels and whether they came from the cache.
    """
    if cache_path.exists():
        with np.load(cache_path) as cached:
            return cached["soft_labels"], True
    if isinstance(teacher, nn.Module):
        teacher.eval()
        with torch.no_grad():
            logits = teacher(torch.from_numpy(x))
    else:
        logits = torch.from_numpy(np.asarray(teacher(x), dtype=np.float32))
    probabilities = F.softmax(logits / temperature, dim=1).numpy().astype(np.float32)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, soft_labels=probabilities)
    tmp.replace(cache_path)
    return probabilities, False
