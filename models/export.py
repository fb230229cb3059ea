"""ONNX export with a fixed signature, a numerical check against PyTorch, and a latency probe."""

from __future__ import annotations

import hashlib
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from models.nets import NUM_PIXELS

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
OPSET = 17


def export_onnx(net: nn.Module, path: Path) -> None:
    """Input ``pixels`` FP32 [-1, 64] (raw 0..16), output ``logits`` FP32 [-1, 10]."""
    net.eval()
    dummy = torch.zeros(1, NUM_PIXELS, dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter on purpose (dynamo=False): the new one needs onnxscript, and this
    # one's output is bit-for-bit reproducible here. Its deprecation notices say nothing new.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def content_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def cpu_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_difference(net: nn.Module, path: Path, x: np.ndarray) -> float:
    """Largest |PyTorch - ONNX Runtime| over ``x``; the build requires it under 1e-4."""
    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    actual = cpu_session(path).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    return float(np.abs(expected - actual).max())


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
