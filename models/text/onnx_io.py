"""Export with both inputs' batch and sequence axes dynamic, and what a file computes: logits,
accuracy per class, latency. Only ONNX Runtime and numpy past ``export``."""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.evaluate import cpu_session
from models.export import OPSET
from models.text.data import (
    ATTENTION_MASK,
    INPUT_IDS,
    MAX_LENGTH,
    NUM_CLASSES,
    OUTPUT_NAME,
    VOCAB_SIZE,
    TextSplit,
)

EVAL_BATCH = 250  # bounds the attention's memory when a whole split is scored


def export_text_onnx(net: nn.Module, path: Path) -> None:
    """Inputs ``input_ids``, ``attention_mask`` INT64 [batch, seq]; output ``logits`` FP32
    [batch, 4]. Traced on a 2 x 5 example; the axes are named, so nothing of it stays fixed."""
    net.eval()
    ids = torch.full((2, 5), 4, dtype=torch.int64)
    mask = torch.ones((2, 5), dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch", 1: "seq"}
    with warnings.catch_warnings():  # as models/export.py: the TorchScript exporter on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (ids, mask),
            str(path),
            input_names=[INPUT_IDS, ATTENTION_MASK],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_IDS: axes, ATTENTION_MASK: axes, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def torch_logits(net: nn.Module, split: TextSplit) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return np.concatenate([
            net(torch.from_numpy(split.input_ids[i : i + EVAL_BATCH]),
                torch.from_numpy(split.attention_mask[i : i + EVAL_BATCH])).numpy()
            for i in range(0, len(split.y), EVAL_BATCH)
        ])  # fmt: skip


def onnx_logits(path: Path, split: TextSplit) -> np.ndarray:
    session = cpu_session(path)
    return np.concatenate([
        session.run([OUTPUT_NAME], {INPUT_IDS: split.input_ids[i : i + EVAL_BATCH],
                                    ATTENTION_MASK: split.attention_mask[i : i + EVAL_BATCH]})[0]
        for i in range(0, len(split.y), EVAL_BATCH)
    ])  # fmt: skip


def accuracy_by_class(path: Path, split: TextSplit) -> tuple[float, dict[str, float]]:
    """Accuracy of the file as ONNX Runtime runs it, overall and on each true class."""
    right = onnx_logits(path, split).argmax(axis=1) == split.y
    per_class = {str(c): float(right[split.y == c].mean()) for c in range(NUM_CLASSES)}
    return float(right.mean()), per_class


def latency_ms(path: Path, batch_size: int, length: int = MAX_LENGTH, runs: int = 100) -> float:
    """Median wall time of one single-threaded ONNX Runtime CPU call on ``batch_size``
    sequences of ``length`` tokens, in milliseconds."""
    session = cpu_session(path)
    rng = np.random.default_rng(0)
    feed = {
        INPUT_IDS: rng.integers(1, VOCAB_SIZE, (batch_size, length)).astype(np.int64),
        ATTENTION_MASK: np.ones((batch_size, length), dtype=np.int64),
    }
    for _ in range(5):
        session.run([OUTPUT_NAME], feed)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run([OUTPUT_NAME], feed)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000.0
