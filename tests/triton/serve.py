"""A real Triton Inference Server for the tests, serving the shipped ONNX files.

Runs under the Triton environment (`make triton-env`: Debian's python3.11 with nvidia-pytriton,
which bundles `tritonserver` and its Python backend). Models are Python callables running ONNX
Runtime, since the bundled server has no ONNX Runtime backend:

- teacher, student: the shipped models
- student_slow: the student after a sleep of --slow-ms (to exceed a gateway's timeout)
- student_five: a model whose signature differs (5 classes), for the signature check
- student_hung: the student, which answers its first call (a gateway's warm-up) and then never
  answers again (a hung backend, for the isolation benchmark of several models per gateway)
- any ``--extra NAME=PATH``: that ONNX file with its own signature (any inputs and outputs,
  strings as BYTES), for the tests of other signatures. A BF16 model is declared (its
  metadata reads BF16) but cannot answer: Triton's Python backend, which PyTriton's proxy
  runs, refuses ``as_numpy()`` on a BF16 tensor ("Use to_dlpack() and from_dlpack()")

Usage: python serve.py --http-port P --grpc-port Q --metrics-port R --models-dir DIR
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

MAX_BATCH = 1024


def onnx_callable(
    path: Path,
    delay_s: float = 0.0,
    keep: int | None = None,
    answers: int | None = None,
):
    """``answers``: how many calls are answered before every later one hangs (None: all)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    calls = [0]

    @batch
    def infer(pixels: np.ndarray) -> dict[str, np.ndarray]:
        calls[0] += 1
        if answers is not None and calls[0] > answers:
            threading.Event().wait()  # hung: holds the model's instance, burns no CPU
        if delay_s:
            time.sleep(delay_s)
        logits = session.run(["logits"], {"pixels": pixels.astype(np.float32)})[0]
        return {"logits": logits[:, :keep] if keep else logits}

    return infer


class _Bf16:  # pytriton reads a dtype as ``dtype().dtype``; bfloat16() needs a number
    dtype = np.dtype(ml_dtypes.bfloat16)


_NUMPY = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
          "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(bool)": np.bool_,
          "tensor(string)": np.bytes_, "tensor(bfloat16)": _Bf16}  # fmt: skip


def any_signature(path: Path):  # type: ignore[no-untyped-def]
    """The callable and tensors for an ONNX file of any signature (batch axis first). A tensor
    of the batch axis alone is [batch, 1] on Triton (which needs dims for strings)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    strings = {n.name for n in session.get_inputs() if n.type == "tensor(string)"}

    def tensors(nodes: list) -> list[Tensor]:  # type: ignore[type-arg]
        return [Tensor(name=n.name, dtype=_NUMPY[n.type],
                       shape=tuple(d if isinstance(d, int) else -1 for d in n.shape[1:]) or (1,))
                for n in nodes]  # fmt: skip

    flat = {n.name for n in [*session.get_inputs(), *session.get_outputs()] if len(n.shape) == 1}

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        inputs = {name: a.reshape(-1) if name in flat else a for name, a in inputs.items()}
        feed = {name: (np.vectorize(lambda b: b.decode(), otypes=[object])(a) if name in strings
                       else a) for name, a in inputs.items()}  # fmt: skip
        results = {name: r.reshape(-1, 1) if name in flat else r
                   for name, r in zip(names, session.run(names, feed), strict=True)}  # fmt: skip
        return {name: (np.vectorize(lambda t: t.encode(), otypes=[object])(r)
                       if r.dtype == object else r) for name, r in results.items()}  # fmt: skip

    return infer, tensors(session.get_inputs()), tensors(session.get_outputs())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--slow-ms", type=float, default=300.0)
    parser.add_argument("--extra", action="append", default=[], help="NAME=PATH of an ONNX file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.http_port,
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, log_verbose=0,
    )  # fmt: skip
    teacher, student = args.models_dir / "teacher.onnx", args.models_dir / "student.onnx"
    # name: (path, delay_s, keep, answers, classes): onnx_callable's arguments, and its outputs
    models = {
        "teacher": (teacher, 0.0, None, None, 10),
        "student": (student, 0.0, None, None, 10),
        "student_slow": (student, args.slow_ms / 1000.0, None, None, 10),
        "student_five": (student, 0.0, 5, None, 5),
        "student_hung": (student, 0.0, None, 1, 10),
    }
    with Triton(config=config) as triton:
        for name, (path, delay, keep, answers, classes) in models.items():
            triton.bind(
                model_name=name,
                infer_func=onnx_callable(path, delay, keep, answers),
                inputs=[Tensor(name="pixels", dtype=np.float32, shape=(64,))],
                outputs=[Tensor(name="logits", dtype=np.float32, shape=(classes,))],
                config=ModelConfig(max_batch_size=MAX_BATCH),
                strict=True,
            )
        for extra in args.extra:
            name, path = extra.split("=", 1)
            infer, inputs, outputs = any_signature(Path(path))
            triton.bind(model_name=name, infer_func=infer, inputs=inputs, outputs=outputs,
                        config=ModelConfig(max_batch_size=MAX_BATCH), strict=True)  # fmt: skip
        triton.serve()


if __name__ == "__main__":
    main()
