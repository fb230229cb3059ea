"""gRPC's ``ModelInferRequest`` into the core's tensors, and tensors into ``ModelInferResponse``.

Tensors come either as ``raw_input_contents`` (one bytes entry per input, as tritonclient sends
them) or typed ``contents``; both are checked by ``codec.decode_parsed``, so a mistake gets the
same message over gRPC as over HTTP. Answers carry ``raw_output_contents``, as Triton's do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb

from gateway import bytes_tensors
from gateway.codec import DecodedRequest, decode_parsed, describe_request_errors
from gateway.errors import BadRequest
from gateway.protocol import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    InferenceRequest,
    RequestInput,
    RequestOutput,
    RequestParameters,
    TensorParameters,
)
from gateway.signature import NUMPY_TO_V2, Signature

# Where each datatype's values sit in InferTensorContents.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}  # fmt: skip


def decode_grpc_request(
    request: pb.ModelInferRequest, signature: Signature, max_batch_size: int
) -> DecodedRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} "
                         "inputs: give one per input, or typed contents")  # fmt: skip
    if not request.inputs:  # pydantic says it, in the HTTP path's words
        _validate({"id": request.id or None, "inputs": []})
    if not echoable(request.id):
        _validate({"id": request.id, "inputs": [{"name": "", "shape": [], "datatype": ""}]})
    # Protobuf has typed every field already, so the request is built without validation; the
    # checks against the signature (names, datatypes, shapes, sizes) are decode_parsed's.
    inputs = []
    for index, tensor in enumerate(request.inputs):
        parameters = data = None
        if raw:
            parameters = TensorParameters.model_construct(binary_data_size=len(raw[index]))
        else:
            field = CONTENTS_FIELD.get(tensor.datatype)
            if field is None and tensor.datatype in ("FP16", "BF16"):
                raise BadRequest(f"input '{tensor.name}' is {tensor.datatype}, which has no typed "
                                 "contents field: send it in raw_input_contents")  # fmt: skip
            data = list(getattr(tensor.contents, field)) if field else []
        inputs.append(RequestInput.model_construct(
            name=tensor.name, shape=list(tensor.shape), datatype=tensor.datatype,
            parameters=parameters, data=data,
        ))  # fmt: skip
    outputs = [RequestOutput.model_construct(name=output.name, parameters=None)
               for output in request.outputs] or None  # fmt: skip
    timeout = request.parameters["timeout"].int64_param if "timeout" in request.parameters else 0
    if timeout < 0:
        raise BadRequest(f"invalid inference request: parameters.timeout is {timeout}; give the "
                         "client's deadline in microseconds (0: none)")  # fmt: skip
    asked = RequestParameters.model_construct(binary_data_output=True, timeout=timeout)
    parsed = InferenceRequest.model_construct(
        id=request.id or None, parameters=asked, inputs=inputs, outputs=outputs
    )
    # One copy of the raw tensors, so that both protocols share one decoder.
    binary = memoryview(raw[0] if len(raw) == 1 else b"".join(raw))
    return decode_parsed(parsed, binary, signature, max_batch_size, binary_outputs=True)


def echoable(request_id: str) -> bool:
    """Whether a client's id may go back in metadata (``x-request-id``) as it is."""
    return len(request_id) <= MAX_ID_LENGTH and re.match(ID_PATTERN, request_id) is not None


def _validate(fields: dict[str, Any]) -> None:
    try:
        InferenceRequest.model_validate(fields)
    except ValidationError as exc:
        raise BadRequest(describe_request_errors(exc)) from exc


def encode_grpc_response(
    model_name: str, model_version: str, request_id: str, outputs: Mapping[str, np.ndarray]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id
    )
    for name, array in outputs.items():
        array = np.ascontiguousarray(array)
        response.outputs.add(name=name, datatype=NUMPY_TO_V2[array.dtype], shape=array.shape)
        raw = bytes_tensors.serialize(array) if array.dtype == object else array.tobytes()
        response.raw_output_contents.append(raw)
    return response
