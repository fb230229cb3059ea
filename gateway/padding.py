"""Padded batching: requests whose inputs differ only along the model's dynamic axes (a sequence
length) run as one call, each input padded to the longest in the batch (or up to a length
bucket's edge) with its pad value; outputs that carry a padded axis are cut back to each
request's own length. Used by ``gateway.batching`` when ``batching.pad`` is on.

Like Triton's dynamic batcher with ragged inputs made dense: the model sees an ordinary padded
batch, and must ignore the padding itself (an attention mask padded with 0). A model that reads
no mask answers differently for a padded row, which is why this is opt-in.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.signature import Signature, TensorSpec

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Padded:
    """One padded call's inputs, what padding added, and how to give each request its part."""

    inputs: dict[str, np.ndarray]
    lengths: dict[int, list[tuple[str, int]]]
    """Padded size -> the (input, axis) pairs padded to it: an output axis of that size is cut
    back to the request's own size of the first such input axis."""
    padding_elements: int
    """Elements padding added to the call's inputs."""
    elements: int
    """Elements of the call's inputs, padding included."""


class Padding:
    def __init__(
        self,
        signature: Signature,
        pad_values: Mapping[str, float],
        buckets: Sequence[int] | None = None,
    ) -> None:
        """``pad_values`` by input name (0 for any not given); ``buckets``: ascending edges."""
        self._specs = {spec.name: spec for spec in signature.inputs}
        self._dynamic = {
            spec.name: [axis for axis, size in enumerate(spec.shape) if axis > 0 and size == -1]
            for spec in signature.inputs
        }
        self._pad_values = {spec.name: _fill(spec, pad_values.get(spec.name, 0)) for spec in
                            signature.inputs}  # fmt: skip
        self._cut_axes = {
            spec.name: [axis for axis, size in enumerate(spec.shape) if axis > 0 and size == -1]
            for spec in signature.outputs
        }
        self._buckets = list(buckets) if buckets else None

    def key(self, inputs: Tensors) -> Hashable:
        """Requests with equal keys may share a call: same inputs and datatypes, same fixed
        axes, and with buckets, the same bucket on every dynamic axis."""
        parts = []
        for name in sorted(inputs):
            array = inputs[name]
            dynamic = self._dynamic.get(name, [])
            fixed = tuple(
                s for axis, s in enumerate(array.shape) if axis > 0 and axis not in dynamic
            )
            bucket = (
                tuple(self._bucket(array.shape[axis]) for axis in dynamic if axis < array.ndim)
                if self._buckets
                else ()
            )
            parts.append((name, array.dtype.str, array.ndim, fixed, bucket))
        return tuple(parts)

    def pad(self, batch: Sequence[Tensors]) -> Padded:
        """The batch's inputs, each padded along its dynamic axes and concatenated."""
        inputs: dict[str, np.ndarray] = {}
        lengths: dict[int, list[tuple[str, int]]] = {}
        added = total = 0
        for name in batch[0]:
            arrays = [request[name] for request in batch]
            target = list(arrays[0].shape[1:])
            for axis in self._dynamic.get(name, []):
                longest = max(a.shape[axis] for a in arrays)
                target[axis - 1] = self._padded_size(name, axis, longest)
                if any(a.shape[axis] != target[axis - 1] for a in arrays):
                    lengths.setdefault(target[axis - 1], []).append((name, axis))
            if all(list(a.shape[1:]) == target for a in arrays):
                joined = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
            else:
                rows = sum(a.shape[0] for a in arrays)
                joined = np.full([rows, *target], self._pad_values[name], dtype=arrays[0].dtype)
                offset = 0
                for a in arrays:
                    joined[(slice(offset, offset + a.shape[0]), *map(slice, a.shape[1:]))] = a
                    offset += a.shape[0]
            inputs[name] = joined
            added += joined.size - sum(a.size for a in arrays)
            total += joined.size
        return Padded(inputs, lengths, added, total)

    def cut(
        self, outputs: Mapping[str, np.ndarray], padded: Padded, own: Tensors, start: int,
        rows: int,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """One request's rows of each output, cut back along any axis that was padded."""
        answer = {}
        for name, array in outputs.items():
            index: list[slice] = [slice(start, start + rows)]
            for axis in range(1, array.ndim):
                size = array.shape[axis]
                source = padded.lengths.get(size) if axis in self._cut_axes.get(name, ()) else None
                if source:
                    input_name, input_axis = _same_axis_first(source, axis)
                    index.append(slice(0, own[input_name].shape[input_axis]))
                else:
                    index.append(slice(None))
            answer[name] = array[tuple(index)]
        return answer

    def _bucket(self, size: int) -> int:
        assert self._buckets is not None
        return bisect.bisect_left(self._buckets, size)  # past the last edge: len(buckets)

    def _padded_size(self, name: str, axis: int, longest: int) -> int:
        if not self._buckets:
            return longest
        index = self._bucket(longest)
        if index == len(self._buckets):
            return longest
        edge = self._buckets[index]
        most = self._specs[name].max_shape
        if most is not None and most[axis] != -1:
            edge = min(edge, most[axis])  # never past what the model accepts
        return max(edge, longest)


def _same_axis_first(source: list[tuple[str, int]], axis: int) -> tuple[str, int]:
    return next((pair for pair in source if pair[1] == axis), source[0])


def _fill(spec: TensorSpec, value: float) -> object:
    if spec.datatype == "BYTES":
        return "" if spec.text else b""
    return value
