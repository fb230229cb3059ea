"""A real ONNX model of the digits signature made slow on purpose (``pixels`` FP32 [-1, 64] ->
``logits`` FP32 [-1, 10]): 128 products by one 512 x 512 matrix, so a call takes about 2 ms of
ONNX Runtime's work, for tests and benchmarks of what overload does to a backend-bound gateway."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_slow_model(path: Path, width: int = 512, layers: int = 128) -> Path:
    """``layers`` products by one shared ``width`` x ``width`` matrix (about
    ``layers * width**2`` multiply-adds a row; the file stays small), seeded, so every call of
    the file does the same work."""
    rng = np.random.default_rng(0)
    scale = 1.0 / np.sqrt(width)
    first = (rng.standard_normal((64, width)) / 8.0).astype(np.float32)
    hidden = np.linalg.qr(rng.standard_normal((width, width)))[0].astype(np.float32)  # norm 1
    last = (rng.standard_normal((width, 10)) * scale).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["pixels", "first"], ["h0"])]
    for index in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{index}", "hidden"], [f"h{index + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "last"], ["logits"]))
    graph = helper.make_graph(
        nodes, "slow_digits",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [-1, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [-1, 10])],
        [numpy_helper.from_array(first, "first"), numpy_helper.from_array(hidden, "hidden"),
         numpy_helper.from_array(last, "last")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
