"""What a registered ONNX file is worth: its accuracy (overall and per class) and its latency.

Only ONNX Runtime and numpy: anyone can check the registry's claims without torch.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.data import Split
from models.nets import NUM_CLASSES, NUM_PIXELS

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"


def cpu_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(cpu_session(path).run([OUTPUT_NAME], {INPUT_NAME: x})[0])


def accuracy_by_class(path: Path, split: Split) -> tuple[float, dict[str, float]]:
    """Test accuracy of the file as ONNX Runtime runs it, and the accuracy on each true class."""
    predicted = onnx_logits(path, split.x).argmax(axis=1)
    right = predicted == split.y
    per_class = {str(c): float(right[split.y == c].mean()) for c in range(NUM_CLASSES)}
    return float(right.mean()), per_class


def latency_ms(path: Path, batch_size: int, runs: int = 300) -> float:
    """Median wall time of one single-threaded ONNX Runtime CPU call, in milliseconds."""
    session = cpu_session(path)
    x = np.random.default_rng(0).uniform(0, 16, (batch_size, NUM_PIXELS)).astype(np.float32)
    for _ in range(20):
        session.run([OUTPUT_NAME], {INPUT_NAME: x})
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: x})
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000.0
