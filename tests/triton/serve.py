"""A real Triton Inference Server for the tests, serving the shipped ONNX files.

Runs under the Triton environment (`make triton-env`: Debian's python3.11 with nvidia-pytriton,
which bundles `tritonserver` and its Python backend). Models are Python callables running ONNX
Runtime, since the bundled server has no ONNX Runtime backend:

- teacher, student: the shipped models
- student_slow: the student after a sleep of --slow-ms (to exceed a gateway's timeout)
- student_five: a model whose signature differs (5 classes), for the signature check

Usage: python serve.py --http-port P --grpc-port Q --metrics-port R --models-dir DIR
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

MAX_BATCH = 1024


def onnx_callable(path: Path, delay_s: float = 0.0, keep: int | None = None):  # type: ignore[no-untyped-def]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    @batch
    def infer(pixels: np.ndarray) -> dict[str, np.ndarray]:
        if delay_s:
            time.sleep(delay_s)
        logits = session.run(["logits"], {"pixels": pixels.astype(np.float32)})[0]
        return {"logits": logits[:, :keep] if keep else logits}

    return infer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--slow-ms", type=float, default=300.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.http_port,
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, log_verbose=0,
    )  # fmt: skip
    models = {
        "teacher": (args.models_dir / "teacher.onnx", 0.0, None, 10),
        "student": (args.models_dir / "student.onnx", 0.0, None, 10),
        "student_slow": (args.models_dir / "student.onnx", args.slow_ms / 1000.0, None, 10),
        "student_five": (args.models_dir / "student.onnx", 0.0, 5, 5),
    }
    with Triton(config=config) as triton:
        for name, (path, delay, keep, classes) in models.items():
            triton.bind(
                model_name=name,
                infer_func=onnx_callable(path, delay, keep),
                inputs=[Tensor(name="pixels", dtype=np.float32, shape=(64,))],
                outputs=[Tensor(name="logits", dtype=np.float32, shape=(classes,))],
                config=ModelConfig(max_batch_size=MAX_BATCH),
                strict=True,
            )
        triton.serve()


if __name__ == "__main__":
    main()
