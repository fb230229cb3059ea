"""Padded batching: requests whose inputs differ only along the model's dynamic axes (a sequence
length) run as one call, each input padded to the longest in the batch (or up to a length
bucket's edge) with its pad value; outputs that carry a padded axis are cut back to each
request's own length. Used by ``gateway.batching`` when ``batching.pad`` is on.

Like Triton's dynamic batcher with ragged inputs made dense: the model sees an ordinary padded
batch, and must ignore the padding itself (an attention mask padded with 0). A model that reads
no mask answers differently for a padded row, which is why this is opt-in.

Two rules keep it safe for any signature, both checked when the gateway starts:
- every padded axis has a maximum (``inputs.<name>.max_shape``, or that of an input sharing the
  axis's name): otherwise one long request makes every row of its batch that long, and a call
  allocates up to max_batch_size times the request;
- every dynamic output axis is tied to an input axis by the model's own axis names (ONNX's
  ``seq`` on ``input_ids`` and on ``token_scores``) or by ``outputs.<name>.padded_axes``: that is
  the axis cut back to each request's own length. Sizes are never compared: a class axis that
  happens to equal the padded length is not a sequence.
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
    """One padded call's inputs and what padding added."""

    inputs: dict[str, np.ndarray]
    padding_elements: int
    """Elements padding added to the call's inputs."""
    elements: int
    """Elements of the call's inputs, padding included."""


Links = Mapping[str, Mapping[int, tuple[str, int]]]
"""Output name -> {output axis: (input name, input axis)} (``outputs.<name>.padded_axes``)."""


class Padding:
    def __init__(
        self,
        signature: Signature,
        pad_values: Mapping[str, float],
        buckets: Sequence[int] | None = None,
        links: Links | None = None,
    ) -> None:
        """``pad_values`` by input name (0 for any not given); ``buckets``: ascending edges;
        ``links``: configured ties of output axes to input axes, before the model's axis names.
        ``ValueError`` naming the input or output and the config key when padding would be
        unbounded or an output's dynamic axis has no tie."""
        self._specs = {spec.name: spec for spec in signature.inputs}
        self._dynamic = {
            spec.name: [axis for axis, size in enumerate(spec.shape) if axis > 0 and size == -1]
            for spec in signature.inputs
        }
        self._pad_values = {spec.name: _fill(spec, pad_values.get(spec.name, 0)) for spec in
                            signature.inputs}  # fmt: skip
        _check_bounded(signature, self._dynamic)
        self._cut_axes = _output_links(signature, self._dynamic, links or {})
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
        added = total = 0
        for name in batch[0]:
            arrays = [request[name] for request in batch]
            target = list(arrays[0].shape[1:])
            for axis in self._dynamic.get(name, []):
                longest = max(a.shape[axis] for a in arrays)
                target[axis - 1] = self._padded_size(name, axis, longest)
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
        return Padded(inputs, added, total)

    def cut(self, outputs: Mapping[str, np.ndarray], own: Tensors, start: int,
            rows: int) -> dict[str, np.ndarray]:  # fmt: skip
        """One request's rows of each output, each tied axis cut back to the request's own size
        of its input axis (a no-op where the request was not padded)."""
        answer = {}
        for name, array in outputs.items():
            index = [slice(start, start + rows)] + [slice(None)] * (array.ndim - 1)
            for axis, (input_name, input_axis) in self._cut_axes.get(name, {}).items():
                index[axis] = slice(0, own[input_name].shape[input_axis])
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


def _check_bounded(signature: Signature, dynamic: Mapping[str, list[int]]) -> None:
    """Every padded axis has a maximum: its input's, or one of an input sharing its name (the
    codec makes inputs that share an axis name agree on its size)."""
    bounded_names = {
        spec.axis_names[axis]
        for spec in signature.inputs
        for axis in dynamic[spec.name]
        if spec.max_shape is not None and spec.max_shape[axis] != -1
        and spec.axis_names is not None and spec.axis_names[axis] is not None
    }  # fmt: skip
    for spec in signature.inputs:
        for axis in dynamic[spec.name]:
            own = spec.max_shape is not None and spec.max_shape[axis] != -1
            named = spec.axis_names[axis] if spec.axis_names is not None else None
            if not own and named not in bounded_names:
                example = [str(size) for size in spec.shape]
                example[axis] = "512"
                raise ValueError(
                    f"batching.pad needs a maximum for input '{spec.name}' axis {axis}: set "
                    f"inputs.{spec.name}.max_shape (e.g. [{', '.join(example)}]); without one, "
                    "one long request pads every row of its batch to its length"
                )


def _output_links(
    signature: Signature, dynamic: Mapping[str, list[int]], links: Links
) -> dict[str, dict[int, tuple[str, int]]]:
    """Each output's axes to cut, and the input axis each is cut to: configured, else by the
    model's axis names; ``ValueError`` for a dynamic output axis tied to nothing."""
    padded = {(name, axis) for name, axes in dynamic.items() for axis in axes}
    by_axis_name: dict[str, tuple[str, int]] = {}
    for spec in signature.inputs:
        for axis in dynamic[spec.name]:
            named = spec.axis_names[axis] if spec.axis_names is not None else None
            if named is not None:
                by_axis_name.setdefault(named, (spec.name, axis))
    outputs = {spec.name: spec for spec in signature.outputs}
    for name in links:
        if name not in outputs:
            raise ValueError(f"outputs.{name}: the model has no output '{name}'; its outputs "
                             f"are: {', '.join(sorted(outputs))}")  # fmt: skip
    cuts: dict[str, dict[int, tuple[str, int]]] = {}
    for spec in signature.outputs:
        configured = links.get(spec.name)
        if configured is not None:
            for axis, tie in configured.items():
                if not 0 < axis < len(spec.shape) or tie not in padded:
                    raise ValueError(
                        f"outputs.{spec.name}.padded_axes: {{{axis}: {list(tie)}}} must tie an "
                        f"axis past the batch axis of '{spec.name}' {list(spec.shape)} to a "
                        f"dynamic axis of an input (padded: {sorted(padded)})"
                    )
            cuts[spec.name] = dict(configured)
            continue
        cuts[spec.name] = {}
        for axis, size in enumerate(spec.shape):
            if axis == 0 or size != -1:
                continue
            named = spec.axis_names[axis] if spec.axis_names is not None else None
            if named is None or named not in by_axis_name:
                said = f"named '{named}'" if named is not None else "unnamed"
                raise ValueError(
                    f"batching.pad cannot tell whether output '{spec.name}' axis {axis} "
                    f"({said} in the model) carries a padded input axis: set "
                    f"outputs.{spec.name}.padded_axes ({{{axis}: [input, axis]}} to cut it back "
                    "to each request's length, {} to return it whole), or name it like the "
                    "input axis in the model"
                )
            cuts[spec.name][axis] = by_axis_name[named]
    return cuts


def _fill(spec: TensorSpec, value: float) -> object:
    if spec.datatype == "BYTES":
        return "" if spec.text else b""
    return value
