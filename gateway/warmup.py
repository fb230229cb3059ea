"""The warm-up calls a backend makes before it serves, built from its signature (every input,
whatever its datatype and dynamic axes) or from example tensors in the config."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gateway import bytes_tensors
from gateway.config import InputConfig, WarmupConfig
from gateway.errors import BadRequest
from gateway.signature import Signature, TensorSpec

Tensors = dict[str, np.ndarray]
WARMUP_TEXT = "warm up"  # BYTES inputs: short text, which a tokenizer or a lookup accepts


def warmup_calls(
    signature: Signature, inputs: Mapping[str, InputConfig], warmup: WarmupConfig
) -> list[Tensors]:
    """The calls to make, in order; ``ValueError`` naming what is wrong with the examples."""
    if warmup.examples is not None:
        example = _examples(signature, warmup.examples)
        return [example, example]  # the second runs warm
    # One length for every dynamic axis, within every configured maximum: inputs that share an
    # axis (ids and their mask) must agree on it.
    maxima = [
        most
        for spec in signature.inputs
        for axis, most in enumerate(spec.max_shape or ())
        if axis > 0 and most != -1 and spec.shape[axis] == -1
    ]
    length = min([warmup.length, *maxima])
    calls = []
    for rows in warmup.batch_sizes:
        call = {
            spec.name: _generated(spec, rows, length, inputs.get(spec.name))
            for spec in signature.inputs
        }
        calls.append(call)
    return calls


def _generated(spec: TensorSpec, rows: int, length: int, config: InputConfig | None) -> np.ndarray:
    shape = []
    for axis, size in enumerate(spec.shape):
        if size != -1:
            shape.append(size)
            continue
        shape.append(rows if axis == 0 else length)
    if spec.datatype == "BYTES":
        array = np.full(shape, WARMUP_TEXT if spec.text else WARMUP_TEXT.encode(), dtype=object)
        return array
    if np.issubdtype(spec.dtype, np.integer):
        low, high = config.warmup_range if config is not None else (0, 0)
        rng = np.random.default_rng(0)  # the same calls every start
        return rng.integers(low, high, size=shape, endpoint=True).astype(spec.dtype)
    return np.zeros(shape, dtype=spec.dtype)


def _examples(signature: Signature, examples: Mapping[str, list[object]]) -> Tensors:
    names = {spec.name for spec in signature.inputs}
    unknown, missing = examples.keys() - names, names - examples.keys()
    if unknown or missing:
        raise ValueError(
            f"warmup.examples must give every input of the model and no other ("
            f"missing: {sorted(missing)}, unknown: {sorted(unknown)})"
        )
    tensors = {}
    for spec in signature.inputs:
        data = examples[spec.name]
        where = f"warmup.examples.{spec.name}"
        if spec.datatype == "BYTES":
            shape = list(np.asarray(data, dtype=object).shape)
            try:
                array = bytes_tensors.from_json(where, data, shape)
                array = bytes_tensors.as_text(where, array) if spec.text else array
            except BadRequest as exc:
                raise ValueError(exc.message) from exc
        else:
            try:
                array = np.asarray(data, dtype=spec.dtype)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}: not a tensor of {spec.datatype}: {exc}") from exc
        fits = array.ndim == len(spec.shape) and all(
            want in (-1, size) for size, want in zip(array.shape, spec.shape, strict=True)
        )
        if not fits:
            raise ValueError(
                f"{where} has shape {list(array.shape)}; the model expects {list(spec.shape)}"
            )
        tensors[spec.name] = array
    return tensors
