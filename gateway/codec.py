"""Turns V2 request bodies (JSON or with the binary tensor data extension) into numpy arrays, and
arrays back into V2 response bodies, checking everything against the model's signature.

Binary tensors are never copied on the way in (``np.frombuffer`` over the body) and are copied
once on the way out (into the response body).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson
from pydantic import ValidationError

from gateway import bytes_tensors
from gateway.errors import BadRequest
from gateway.protocol import InferenceRequest, RequestInput
from gateway.signature import NUMPY_TO_V2, V2_TO_NUMPY, Signature, TensorSpec
from gateway.validation import describe_body_errors, is_invalid_json

HEADER_LENGTH = "inference-header-content-length"
_BF16 = V2_TO_NUMPY["BF16"]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class DecodedRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput]
    batch_size: int
    timeout_seconds: float | None = None  # the client's own deadline, from the request


def decode_request(
    body: bytes, header_length: str | None, signature: Signature, max_batch_size: int
) -> DecodedRequest:
    """An HTTP body: V2 JSON, with binary tensors after it when ``header_length`` is given."""
    header, binary = _split_body(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        raise BadRequest(describe_request_errors(exc)) from exc
    return decode_parsed(request, binary, signature, max_batch_size)


def describe_request_errors(exc: ValidationError) -> str:
    message = describe_body_errors(exc)
    return message if is_invalid_json(exc) else "invalid inference request: " + message


def decode_parsed(
    request: InferenceRequest,
    binary: memoryview,
    signature: Signature,
    max_batch_size: int,
    binary_outputs: bool | None = None,
) -> DecodedRequest:
    """A parsed request (from HTTP JSON, or built from a gRPC message) and its binary tensor
    data, checked against the signature: the one set of checks and messages for every protocol.
    ``binary_outputs`` overrides the request's own choice (gRPC answers in raw bytes)."""
    inputs = _decode_inputs(request.inputs, binary, signature, max_batch_size)
    batch_sizes = {array.shape[0] for array in inputs.values() if array.ndim > 0}
    if len(batch_sizes) > 1:
        raise BadRequest(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    binary_default = bool(request.parameters and request.parameters.binary_data_output)
    if binary_outputs is not None:
        binary_default = binary_outputs
    return DecodedRequest(
        id=request.id,
        inputs=inputs,
        outputs=_requested_outputs(request, signature, binary_default),
        batch_size=batch_sizes.pop() if batch_sizes else 1,
        timeout_seconds=_client_timeout(request),
    )


def _client_timeout(request: InferenceRequest) -> float | None:
    """``parameters.timeout`` (microseconds, as Triton reads it), in seconds; 0 means none."""
    micros = request.parameters.timeout if request.parameters else None
    return micros / 1e6 if micros else None


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: dict[str, np.ndarray],
    requested: list[RequestedOutput],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    descriptions: list[dict[str, object]] = []
    binary_parts: list[memoryview] = []
    for wanted in requested:
        array = np.ascontiguousarray(outputs[wanted.name])
        description: dict[str, object] = {
            "name": wanted.name,
            "datatype": _v2_datatype(array),
            "shape": list(array.shape),
        }
        if array.dtype == object:  # BYTES: length-prefixed elements, or JSON strings
            if wanted.binary:
                serialized = bytes_tensors.serialize(array)
                description["parameters"] = {"binary_data_size": len(serialized)}
                binary_parts.append(memoryview(serialized))
            else:
                description["data"] = bytes_tensors.to_json(array)
        elif wanted.binary:
            description["parameters"] = {"binary_data_size": array.nbytes}
            # BF16's buffer format is not one memoryview knows: its bits, as uint16
            data = array.data if array.dtype != _BF16 else array.view(np.uint16).data
            binary_parts.append(data.cast("B"))
        else:  # BF16 as FP64 numbers, the exact values (orjson writes no bfloat16)
            flat = array.reshape(-1)
            description["data"] = flat if array.dtype != _BF16 else flat.astype(np.float64)
        descriptions.append(description)
    header = orjson.dumps(
        {
            "model_name": model_name,
            "model_version": model_version,
            "id": request_id,
            "outputs": descriptions,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not binary_parts:
        return header, None
    return b"".join([header, *binary_parts]), len(header)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequest(
            f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
        ) from None
    if not 0 <= length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length is {length} but the body has {len(body)} bytes"
        )
    view = memoryview(body)
    return body[:length], view[length:]


def _decode_inputs(
    inputs: list[RequestInput], binary: memoryview, signature: Signature, max_batch_size: int
) -> dict[str, np.ndarray]:
    decoded: dict[str, np.ndarray] = {}
    offset = 0
    for given in inputs:
        spec = signature.input(given.name)
        if spec is None:
            expected = ", ".join(s.name for s in signature.inputs)
            raise BadRequest(f"unknown input '{given.name}'; the model's inputs are: {expected}")
        if given.name in decoded:
            raise BadRequest(f"input '{given.name}' is given twice")
        _check_datatype_and_shape(given, spec, max_batch_size)
        binary_size = given.parameters.binary_data_size if given.parameters else None
        if binary_size is not None:
            if given.data is not None:
                raise BadRequest(
                    f"input '{given.name}' has both 'data' and parameters.binary_data_size"
                )
            chunk = binary[offset : offset + binary_size]
            if len(chunk) < binary_size:
                raise BadRequest(
                    f"input '{given.name}' declares binary_data_size {binary_size} but only "
                    f"{len(chunk)} bytes of binary data remain in the body"
                )
            offset += binary_size
            array = _from_binary(given, spec, chunk)
        elif given.data is not None:
            array = _from_json(given, spec)
        else:
            raise BadRequest(
                f"input '{given.name}' has no data: give 'data' or parameters.binary_data_size"
            )
        if spec.value_range is not None:
            _check_values(given.name, array, spec.value_range)
        decoded[given.name] = bytes_tensors.as_text(given.name, array) if spec.text else array
    if offset != len(binary):
        raise BadRequest(
            f"binary sizes do not add up: the inputs declare {offset} bytes of binary data "
            f"but the body carries {len(binary)}"
        )
    missing = [spec for spec in signature.inputs if spec.name not in decoded]
    if missing:
        wanted = ", ".join(
            f"'{spec.name}' ({spec.datatype} {list(spec.shape)})" for spec in missing
        )
        raise BadRequest(f"missing input(s): {wanted}; the model takes every one of its inputs")
    for axis_name, pairs in signature.shared_axes.items():
        sizes = {(name, axis): decoded[name].shape[axis] for name, axis in pairs}
        if len(set(sizes.values())) > 1:
            described = ", ".join(f"'{name}' has {size} on axis {axis}"
                                  for (name, axis), size in sizes.items())  # fmt: skip
            raise BadRequest(f"inputs disagree on the model's axis '{axis_name}': {described}; "
                             "they must be equal")  # fmt: skip
    return decoded


def _check_datatype_and_shape(given: RequestInput, spec: TensorSpec, max_batch_size: int) -> None:
    if given.datatype != spec.datatype:
        raise BadRequest(
            f"input '{given.name}' has datatype {given.datatype}; the model expects {spec.datatype}"
        )
    expected = list(spec.shape)
    shape_ok = len(given.shape) == len(expected) and all(
        size >= 0 and (want == -1 or size == want)
        for size, want in zip(given.shape, expected, strict=True)
    )
    if not shape_ok:
        raise BadRequest(
            f"input '{given.name}' has shape {given.shape}; the model expects {expected} "
            "(-1: any size)"
        )
    if given.shape and expected[0] == -1 and not 1 <= given.shape[0] <= max_batch_size:
        raise BadRequest(
            f"input '{given.name}' has batch size {given.shape[0]}; "
            f"the gateway accepts 1 to {max_batch_size}"
        )
    if spec.max_shape is not None:
        for axis, (size, most) in enumerate(zip(given.shape, spec.max_shape, strict=True)):
            if most != -1 and size > most:
                raise BadRequest(
                    f"input '{given.name}' has size {size} on axis {axis}; the gateway accepts at "
                    f"most {most} there (inputs.{given.name}.max_shape: {list(spec.max_shape)})"
                )


def _check_values(name: str, array: np.ndarray, bounds: tuple[float, float]) -> None:
    if array.size == 0:
        return
    low, high = array.min(), array.max()
    if low < bounds[0] or high > bounds[1] or np.isnan(low) or np.isnan(high):
        raise BadRequest(
            f"input '{name}' holds values from {low} to {high}; the gateway accepts "
            f"{bounds[0]:g} to {bounds[1]:g} there (inputs.{name}.value_range)"
        )


def _from_binary(given: RequestInput, spec: TensorSpec, chunk: memoryview) -> np.ndarray:
    if spec.datatype == "BYTES":
        return bytes_tensors.parse_elements(given.name, chunk, given.shape)
    expected_bytes = math.prod(given.shape) * spec.dtype.itemsize
    if len(chunk) != expected_bytes:
        raise BadRequest(
            f"input '{given.name}' has binary_data_size {len(chunk)}, but shape {given.shape} "
            f"of {spec.datatype} needs {expected_bytes} bytes"
        )
    return np.frombuffer(chunk, dtype=spec.dtype).reshape(given.shape)


def _from_json(given: RequestInput, spec: TensorSpec) -> np.ndarray:
    if spec.datatype == "BYTES":
        return bytes_tensors.from_json(given.name, given.data or [], given.shape)
    try:
        with np.errstate(over="raise"):  # 1e39 as FP32 is an error, not a silent inf
            array = np.asarray(given.data, dtype=spec.dtype if spec.datatype != "BF16" else "<f4")
        if spec.datatype == "BF16":
            array = _to_bf16(array)
    except (OverflowError, FloatingPointError) as exc:
        raise BadRequest(
            f"input '{given.name}' holds a number beyond the range of {spec.datatype} ({exc})"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise BadRequest(
            f"input '{given.name}': data must be a flat or nested list of numbers ({exc})"
        ) from exc
    expected = math.prod(given.shape)
    if array.size != expected:
        raise BadRequest(
            f"input '{given.name}' has {array.size} values in 'data', "
            f"but shape {given.shape} needs {expected}"
        )
    return array.reshape(given.shape)


def _to_bf16(array: np.ndarray) -> np.ndarray:
    """FP32 numbers rounded to the nearest BF16 (ties to even, ml_dtypes' cast, as torch's):
    ml_dtypes sets no floating-point flag on overflow, so a finite number that became an
    infinity is found here."""
    with np.errstate(over="ignore"):
        rounded = array.astype(V2_TO_NUMPY["BF16"])
    if np.isinf(rounded).any() and not np.isinf(array[np.isinf(rounded)]).all():
        raise FloatingPointError("overflow encountered in the cast to BF16")
    return rounded


def _requested_outputs(
    request: InferenceRequest, signature: Signature, binary_default: bool
) -> list[RequestedOutput]:
    if not request.outputs:
        return [RequestedOutput(spec.name, binary_default) for spec in signature.outputs]
    requested = []
    for output in request.outputs:
        if signature.output(output.name) is None:
            expected = ", ".join(s.name for s in signature.outputs)
            raise BadRequest(f"unknown output '{output.name}'; the model's outputs are: {expected}")
        flag = output.parameters.binary_data if output.parameters else None
        requested.append(RequestedOutput(output.name, binary_default if flag is None else flag))
    return requested


def _v2_datatype(array: np.ndarray) -> str:
    return NUMPY_TO_V2[array.dtype]
