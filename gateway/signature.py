"""Tensor signatures and the V2 datatype names, shared by the protocol codec and the backends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import ml_dtypes
import numpy as np

# V2 datatype name -> little-endian numpy dtype. BYTES elements are variable-length: in the gateway
# they are numpy object arrays of ``bytes`` (or of ``str`` for an input that takes text). BF16 is
# ml_dtypes' bfloat16 (numpy has none; tritonclient uses the same), 2 bytes little-endian.
V2_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(object),
}
NUMPY_TO_V2 = {dtype: name for name, dtype in V2_TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, V2 datatype, shape with -1 for a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    max_shape: tuple[int, ...] | None = None
    """The most each axis may be (-1: no maximum), from the config (``inputs.<name>.max_shape``);
    None: only the declared shape binds."""
    text: bool = False
    """A BYTES input the model reads as UTF-8 text (an ONNX string tensor): each element is
    checked and decoded to ``str`` when the request is decoded."""
    value_range: tuple[float, float] | None = None
    """The values the input may hold, inclusive, from the config (``inputs.<name>.value_range``);
    None: the model is the judge."""
    axis_names: tuple[str | None, ...] | None = None
    """The model's names of its dynamic axes (ONNX's ``seq``), None for a fixed or unnamed one:
    inputs that name an axis alike must agree on its size (ids and their mask)."""

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return V2_TO_NUMPY[self.datatype]

    def as_metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @cached_property  # read on every request's decode
    def shared_axes(self) -> dict[str, list[tuple[str, int]]]:
        """Each axis name that several inputs use past the batch axis -> (input, axis) pairs."""
        named: dict[str, list[tuple[str, int]]] = {}
        for spec in self.inputs:
            for axis, name in enumerate(spec.axis_names or ()):
                if axis > 0 and name is not None:
                    named.setdefault(name, []).append((spec.name, axis))
        return {name: pairs for name, pairs in named.items() if len(pairs) > 1}

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)


def signature_mismatches(teacher: Signature, student: Signature) -> list[str]:
    """What differs between two signatures, as sentences; empty when they agree."""
    problems = _compare("input", teacher.inputs, student.inputs)
    problems += _compare("output", teacher.outputs, student.outputs)
    return problems


def _compare(kind: str, teacher: Sequence[TensorSpec], student: Sequence[TensorSpec]) -> list[str]:
    teacher_by_name = {spec.name: spec for spec in teacher}
    student_by_name = {spec.name: spec for spec in student}
    problems = [
        f"{kind} '{name}' exists only on the {side}"
        for side, names in (
            ("teacher", teacher_by_name.keys() - student_by_name.keys()),
            ("student", student_by_name.keys() - teacher_by_name.keys()),
        )
        for name in sorted(names)
    ]
    for name in sorted(teacher_by_name.keys() & student_by_name.keys()):
        t, s = teacher_by_name[name], student_by_name[name]
        if t.datatype != s.datatype:
            problems.append(f"{kind} '{name}': teacher {t.datatype}, student {s.datatype}")
        if t.shape != s.shape:
            problems.append(
                f"{kind} '{name}': teacher shape {list(t.shape)}, student shape {list(s.shape)}"
            )
    return problems


def with_limits(
    signature: Signature,
    max_shapes: Mapping[str, Sequence[int] | None],
    value_ranges: Mapping[str, tuple[float, float] | None] | None = None,
) -> Signature:
    """The signature with the configured maxima of its inputs' axes (``inputs.<name>.max_shape``)
    and ranges of their values (``inputs.<name>.value_range``); ``ValueError`` naming what does
    not fit the model."""
    value_ranges = value_ranges or {}
    names = {spec.name for spec in signature.inputs}
    for name in [*max_shapes, *value_ranges]:
        if name not in names:
            raise ValueError(f"inputs.{name}: the model has no input '{name}'; its inputs are: "
                             + ", ".join(sorted(names)))  # fmt: skip
    inputs = []
    for spec in signature.inputs:
        most = max_shapes.get(spec.name)
        if most is not None:
            if len(most) != len(spec.shape):
                raise ValueError(f"inputs.{spec.name}.max_shape has {len(most)} axes; the input "
                                 f"has {len(spec.shape)} ({list(spec.shape)})")  # fmt: skip
            spec = replace(spec, max_shape=tuple(most))
        bounds = value_ranges.get(spec.name)
        if bounds is not None:
            if spec.datatype in ("BYTES", "BOOL") or bounds[0] > bounds[1]:
                raise ValueError(f"inputs.{spec.name}.value_range {list(bounds)}: needs low <= "
                                 f"high on a numeric input (it is {spec.datatype})")  # fmt: skip
            spec = replace(spec, value_range=bounds)
        inputs.append(spec)
    return replace(signature, inputs=tuple(inputs))
