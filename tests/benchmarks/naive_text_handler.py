"""The benchmark's reference for a model of several inputs (the transformer pair): the least a
FastAPI server can do. It parses the V2 JSON, turns each input into numpy by its datatype, runs
the ONNX file named by ``NAIVE_MODEL`` in process for every output, and answers V2 JSON; no
validation, routing, batching or metrics (``uvicorn tests.benchmarks.naive_text_handler:app``).
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
OUTPUTS = [output.name for output in session.get_outputs()]
DTYPES = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP16": np.float16}
app = FastAPI()


@app.post("/v2/models/digits/infer")
async def infer(request: Request) -> ORJSONResponse:
    body = await request.json()
    feed = {tensor["name"]: np.asarray(tensor["data"], dtype=DTYPES[tensor["datatype"]])
            .reshape(tensor["shape"]) for tensor in body["inputs"]}  # fmt: skip
    results = session.run(OUTPUTS, feed)
    return ORJSONResponse({"model_name": "digits", "model_version": "1", "outputs": [
        {"name": name, "datatype": "FP32", "shape": list(value.shape),
         "data": value.reshape(-1).tolist()} for name, value in zip(OUTPUTS, results, strict=True)
    ]})  # fmt: skip
