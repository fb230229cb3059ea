"""BYTES tensors: numpy object arrays of ``bytes`` (or ``str`` for text) to and from the V2 wire
forms: JSON strings, and the binary extension's (and gRPC raw contents') elements, each a 4-byte
little-endian length and then that many bytes. Every malformed element is a ``BadRequest`` naming
the input and the element."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

import numpy as np

from gateway.errors import BadRequest

_LENGTH = struct.Struct("<I")


def parse_elements(name: str, chunk: memoryview | bytes, shape: list[int]) -> np.ndarray:
    """The binary form of input ``name`` as an object array of ``bytes`` of ``shape``. Stops at
    the shape's element count, so a body cannot make the gateway build more elements than the
    shape asks for (an 8 MiB chunk of 1-byte elements is 1.6 M Python objects)."""
    expected = math.prod(shape)
    size = len(chunk)
    if size < _LENGTH.size * expected:  # every element needs its 4-byte length
        raise BadRequest(
            f"input '{name}' has {size} bytes of BYTES data, too few for the {expected} elements "
            f"of shape {shape} (each is a 4-byte little-endian length, then that many bytes)"
        )
    elements: list[bytes] = []
    offset = 0
    while len(elements) < expected:
        if offset + 4 > size:
            raise BadRequest(
                f"input '{name}': BYTES element {len(elements)} has a broken length prefix: "
                f"{size - offset} bytes left where a 4-byte little-endian length was expected"
            )
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + length > size:
            raise BadRequest(
                f"input '{name}': BYTES element {len(elements)} declares {length} bytes but only "
                f"{size - offset} remain (each element is a 4-byte little-endian length, then "
                "that many bytes)"
            )
        elements.append(bytes(chunk[offset : offset + length]))
        offset += length
    if offset != size:
        raise BadRequest(
            f"input '{name}': {size - offset} bytes follow the {expected} BYTES elements of shape "
            f"{shape}; the data must hold exactly that many elements"
        )
    return _object_array(elements, shape)


def from_json(name: str, data: list[object], shape: list[int]) -> np.ndarray:
    """JSON ``data`` of a BYTES input (strings, flat or nested; gRPC's ``bytes_contents`` come as
    bytes) as an object array of ``bytes`` of ``shape``."""
    flat = list(_flatten(data))
    elements: list[bytes] = []
    for index, value in enumerate(flat):
        if isinstance(value, str):
            elements.append(value.encode())
        elif isinstance(value, bytes):
            elements.append(value)
        else:
            raise BadRequest(
                f"input '{name}' is BYTES: element {index} must be a string, got "
                f"{type(value).__name__}"
            )
    expected = int(np.prod(shape)) if shape else 1
    if len(elements) != expected:
        raise BadRequest(
            f"input '{name}' has {len(elements)} values in 'data', but shape {shape} needs "
            f"{expected}"
        )
    return _object_array(elements, shape)


def as_text(name: str, array: np.ndarray) -> np.ndarray:
    """The elements decoded as UTF-8 ``str``, for a model that reads text (ONNX Runtime takes
    ``str`` for its string tensors)."""
    texts = []
    for index, element in enumerate(array.reshape(-1)):
        try:
            texts.append(element.decode() if isinstance(element, bytes) else str(element))
        except UnicodeDecodeError as exc:
            raise BadRequest(
                f"input '{name}': element {index} is not UTF-8 text ({exc.reason} at byte "
                f"{exc.start}); the model takes text"
            ) from exc
    return _object_array(texts, list(array.shape))


def serialize(array: np.ndarray) -> bytes:
    """The binary form: each element's length (4 bytes, little-endian), then its bytes; ``str``
    elements as UTF-8."""
    parts: list[bytes] = []
    for element in array.reshape(-1):
        data = element if isinstance(element, bytes) else str(element).encode()
        parts += (_LENGTH.pack(len(data)), data)
    return b"".join(parts)


def to_json(array: np.ndarray) -> list[str]:
    """The elements as JSON strings, flat (bytes that are not UTF-8 get U+FFFD, as the JSON form
    cannot carry them: ask for the output in binary to get them exactly)."""
    return [
        element.decode(errors="replace") if isinstance(element, bytes) else str(element)
        for element in array.reshape(-1)
    ]


def _object_array(elements: list[bytes] | list[str], shape: list[int]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


def _flatten(data: Iterable[object]) -> Iterable[object]:
    for value in data:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value
