"""ONNX export with a fixed signature and a numerical check against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.evaluate import INPUT_NAME, OUTPUT_NAME, cpu_session, latency_ms
from models.nets import NUM_PIXELS
from models.registry import content_hash

__all__ = ["content_hash", "export_onnx", "latency_ms", "max_abs_difference"]

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


def max_abs_difference(net: nn.Module, path: Path, x: np.ndarray) -> float:
    """Largest |PyTorch - ONNX Runtime| over ``x``; the build requires it under 1e-4."""
    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    actual = cpu_session(path).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    return float(np.abs(expected - actual).max())
