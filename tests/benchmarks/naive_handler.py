"""The benchmark's references: the least a FastAPI server can do for the Open Inference Protocol.

``/noop`` reads the body and returns a fixed V2 answer; ``/v2/models/digits/infer`` parses the V2
JSON, runs the ONNX file named by ``NAIVE_MODEL`` in process, and answers V2 JSON. Nothing else:
no routing, no validation beyond what parsing does, no metrics. Served by uvicorn like the gateway
(``uvicorn tests.benchmarks.naive_handler:app``).
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse

options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(os.environ["NAIVE_MODEL"], options, ["CPUExecutionProvider"])
app = FastAPI()
LOGITS = {"name": "logits", "datatype": "FP32", "shape": [1, 10], "data": [0.0] * 10}
FIXED = {"model_name": "digits", "model_version": "1", "id": "noop", "outputs": [LOGITS]}


@app.post("/noop")
async def noop(request: Request) -> ORJSONResponse:
    await request.body()
    return ORJSONResponse(FIXED)


@app.post("/v2/models/digits/infer")
async def infer(request: Request) -> ORJSONResponse:
    body = await request.json()
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    logits = session.run(["logits"], {"pixels": x})[0]
    return ORJSONResponse({"model_name": "digits", "model_version": "1",
                           "outputs": [{"name": "logits", "datatype": "FP32",
                                        "shape": list(logits.shape),
                                        "data": logits.reshape(-1).tolist()}]})  # fmt: skip
