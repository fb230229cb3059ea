"""Distribution summaries of what the model is asked and what it answers, for drift detection.

Every summary is a set of counts over fixed bins, exposed as Prometheus counters, so replicas
add up (Prometheus, or the controller's scrape source, sums them) and any two windows can be
compared by differencing. The bins need no profile of the model:

- float inputs: per feature (per block of neighbouring features when there are more than
  ``drift.max_blocks``; one block when a non-batch axis is dynamic), values counted over signed
  half-decade edges, 0 and +-10^(k/2) for k = -6..6 (1e-3 .. 1e3), 28 bins; or the input's own
  ``drift.inputs.<name>.edges``. NaN counts in the top bin.
- integer inputs (token ids, masks): each row's length (elements that are not the input's
  ``pad_value``) and every element's value, both in powers-of-two buckets (0, 1, 2-3, 4-7, ...,
  2^31 and above: 33 buckets): tokenizers give frequent tokens low ids, so unseen or rare tokens
  move mass to high buckets.
- classification outputs: the predicted class (classes beyond 64 grouped into 64 ranges), and
  the top-1 confidence in ten bins with its sum (for the controller's confidence-based accuracy
  estimate); other tasks: the output's values like a float input.
- BYTES and BOOL inputs are not summarised.

Series are bounded: a float input has at most ``max_blocks`` x 28, an integer input 66, the
predictions at most 64 + 10. All of them exist (at 0) from the start, so PromQL's ``increase``
sees a bin's first count.

The request path pays one call per summarised request (``observe``): vectorised binning into
numpy arrays; the counters are read from the arrays at scrape time (``DriftCollector``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import metric_names as names
from gateway.drift_config import DriftConfig
from gateway.errors import GatewayError
from gateway.signature import Signature, TensorSpec
from gateway.task_config import ClassificationTask

if TYPE_CHECKING:
    from gateway.config import GatewaySettings
    from gateway.metrics import GatewayMetrics

_HALF_DECADES = tuple(10.0 ** (k / 2) for k in range(-6, 7))
SIGNED_LOG_EDGES = (*(-e for e in reversed(_HALF_DECADES)), 0.0, *_HALF_DECADES)
"""Upper edges of the default float bins (a 28th bin holds what is above 1e3)."""
POWERS_OF_TWO = tuple(float(2**k) for k in range(32))
"""Lower edges of the integer buckets after 0: bucket k holds 2^(k-1) .. 2^k - 1."""
CONFIDENCE_EDGES = tuple(k / 10 for k in range(1, 10))
MAX_CLASS_BINS = 64
FLUSH_REQUESTS = 64
FLUSH_BYTES = 1 << 20
"""Pending requests are binned when there are this many, or when the copies kept of them hold
this many bytes."""
BIN_AT_ONCE_BYTES = 64 << 10
"""A request whose summarised inputs and answer exceed this is binned at once (with what is
pending), never copied: nothing of it outlives ``observe``."""
_FLOATS = ("FP16", "FP32", "FP64")
_INTEGERS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


def bin_labels(edges: Sequence[float]) -> list[str]:
    """A bin's label is its upper edge (``+Inf`` for the last): counts are per bin, not
    cumulative."""
    return [_edge(e) for e in edges] + ["+Inf"]


def power_labels() -> list[str]:
    """Integer buckets by their largest member: 0, 1, 3, 7, ..., +Inf."""
    return ["0", *(str(2**k - 1) for k in range(1, 32)), "+Inf"]


def _edge(value: float) -> str:
    return f"{value:.6g}"


class DriftMismatch(GatewayError):
    """The ``drift:`` config names an input the model does not have (found at start-up)."""


class _Histogram:
    """Values of an input (or output) counted over edges, per block of features."""

    def __init__(self, spec: TensorSpec, edges: Sequence[float], max_blocks: int) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        self.bins = len(edges) + 1
        dims = spec.shape[1:]
        features = int(np.prod(dims)) if all(d > 0 for d in dims) else 0
        self.blocks = min(features, max_blocks) if features else 1
        # feature j's offset into the flat counts: its block's first bin
        self._offsets = (
            (np.arange(features) * self.blocks // features * self.bins)[None, :]
            if features else None
        )  # fmt: skip
        self.counts = np.zeros(self.blocks * self.bins, dtype=np.int64)

    def observe(self, arrays: Sequence[np.ndarray]) -> None:
        if self._offsets is not None:  # fixed features: one row per example
            rows = np.concatenate([a.reshape(len(a), -1) for a in arrays])
            where = np.searchsorted(self.edges, rows, side="left") + self._offsets
        else:
            values = np.concatenate([a.ravel() for a in arrays])
            where = np.searchsorted(self.edges, values, side="left")
        self.counts += np.bincount(where.ravel(), minlength=len(self.counts))

    def by_block(self) -> np.ndarray:
        return self.counts.reshape(self.blocks, self.bins)


class _Tokens:
    """An integer input: row lengths and element values in powers-of-two buckets."""

    def __init__(self, pad_value: float) -> None:
        self._pad = pad_value
        self._edges = np.asarray(POWERS_OF_TWO)
        self.lengths = np.zeros(len(POWERS_OF_TWO) + 1, dtype=np.int64)
        self.ids = np.zeros(len(POWERS_OF_TWO) + 1, dtype=np.int64)

    def observe(self, arrays: Sequence[np.ndarray]) -> None:
        ids = np.concatenate([a.ravel() for a in arrays])
        # each row's non-pad elements, by one reduceat over all rows of every request
        rows = np.array([len(a) for a in arrays])
        widths = np.repeat(np.array([a.size // max(len(a), 1) for a in arrays]), rows)
        starts = np.concatenate(([0], np.cumsum(widths)[:-1]))
        kept = (ids != self._pad).astype(np.int64)
        lengths = np.where(widths > 0, np.add.reduceat(kept, np.minimum(starts, len(kept) - 1))
                           if len(kept) else 0, 0)  # fmt: skip
        self.lengths += np.bincount(np.searchsorted(self._edges, lengths, side="right"),
                                    minlength=len(self.lengths))  # fmt: skip
        self.ids += np.bincount(np.searchsorted(self._edges, ids, side="right"),
                                minlength=len(self.ids))  # fmt: skip


class _Classes:
    """The predicted class and the top-1 confidence of a classifier's scores."""

    def __init__(self, classes: int, probabilities: bool) -> None:
        self._classes = classes
        self._probabilities = probabilities
        self.bins = min(classes, MAX_CLASS_BINS)
        self.predicted = np.zeros(self.bins, dtype=np.int64)
        self.confidence = np.zeros(len(CONFIDENCE_EDGES) + 1, dtype=np.int64)
        self.confidence_sum = 0.0
        self._edges = np.asarray(CONFIDENCE_EDGES)

    def observe(self, arrays: Sequence[np.ndarray]) -> None:
        rows = np.concatenate([a.reshape(len(a), -1) for a in arrays]).astype(np.float64)
        top = rows.argmax(axis=1)
        if self._probabilities:
            confidence = rows.max(axis=1) / np.maximum(rows.sum(axis=1), 1e-12)
        else:  # softmax's largest value: 1 / sum(exp(x - max))
            confidence = 1.0 / np.exp(rows - rows.max(axis=1, keepdims=True)).sum(axis=1)
        confidence = np.nan_to_num(np.clip(confidence, 0.0, 1.0), nan=0.0)
        self.predicted += np.bincount(top * self.bins // self._classes, minlength=self.bins)
        self.confidence += np.bincount(np.searchsorted(self._edges, confidence, side="left"),
                                       minlength=len(self.confidence))  # fmt: skip
        self.confidence_sum += float(confidence.sum())

    def class_labels(self) -> list[str]:
        """A bin's label is its first class (the class itself up to 64 classes)."""
        return [str(-(-b * self._classes // self.bins)) for b in range(self.bins)]


@dataclass(frozen=True)
class OutputKind:
    """What the summarised output is: its name, and for a classifier its scores' kind."""

    name: str
    classification: bool
    probabilities: bool = False


class DriftSummary:
    """One model's summaries, fed by the request path and read by ``DriftCollector``."""

    def __init__(
        self,
        model: str,
        signature: Signature,
        output: OutputKind,
        config: DriftConfig,
        pad_values: Mapping[str, float],
    ) -> None:
        self.model = model
        self.rows = 0
        self.student_rows = 0
        self._period = max(1, round(1.0 / config.sample_rate))
        self._seen = 0
        self._pending: list[tuple[Mapping[str, np.ndarray], np.ndarray, bool]] = []
        self.pending_bytes = 0  # held by the copies in _pending
        self.floats: dict[str, _Histogram] = {}
        self.tokens: dict[str, _Tokens] = {}
        for spec in signature.inputs:
            if spec.datatype in _FLOATS:
                own = config.inputs.get(spec.name)
                edges = own.edges if own is not None else SIGNED_LOG_EDGES
                self.floats[spec.name] = _Histogram(spec, edges, config.max_blocks)
            elif spec.datatype in _INTEGERS:
                self.tokens[spec.name] = _Tokens(pad_values.get(spec.name, 0.0))
        self._summarised = [*self.floats, *self.tokens]
        self.output = output.name
        out_spec = signature.output(output.name)
        assert out_spec is not None  # the task checked it at start-up
        self.classes: _Classes | None = None
        self.values: _Histogram | None = None
        if output.classification:
            self.classes = _Classes(out_spec.shape[-1], output.probabilities)
        else:
            self.values = _Histogram(out_spec, SIGNED_LOG_EDGES, config.max_blocks)

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                student: bool) -> None:  # fmt: skip
        """One answered request, summarised when it is the sample's turn: its inputs whoever
        answered, its answer when the student gave it (the watched model's predictions; a
        fallback's teacher answer is not the student's). Only copies of the summarised inputs
        and the answer are kept (a binary request's arrays are views of its whole body, a
        batch's answer of the whole batch's output), binned in bulk every ``FLUSH_REQUESTS``
        requests (or ``FLUSH_BYTES``) and before a scrape, which costs a fraction of binning each
        request on its own; a request over ``BIN_AT_ONCE_BYTES`` is binned at once."""
        self._seen += 1
        if self._seen < self._period:
            return
        self._seen = 0
        answer = outputs[self.output]
        kept = {name: inputs[name] for name in self._summarised}
        size = answer.nbytes + sum(array.nbytes for array in kept.values())
        if size > BIN_AT_ONCE_BYTES:
            self._pending.append((kept, answer, student))
            self.flush()
            return
        copies = {name: array.copy() for name, array in kept.items()}
        self._pending.append((copies, answer.copy(), student))
        self.pending_bytes += size
        if len(self._pending) >= FLUSH_REQUESTS or self.pending_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Bins what is pending into the counts."""
        pending, self._pending, self.pending_bytes = self._pending, [], 0
        if not pending:
            return
        self.rows += sum(len(answer) for _, answer, _ in pending)
        for name, histogram in self.floats.items():
            histogram.observe([inputs[name] for inputs, _, _ in pending])
        for name, tokens in self.tokens.items():
            tokens.observe([inputs[name] for inputs, _, _ in pending])
        answers = [answer for _, answer, student in pending if student]
        if not answers:
            return
        self.student_rows += sum(len(answer) for answer in answers)
        if self.classes is not None:
            self.classes.observe(answers)
        elif self.values is not None:
            self.values.observe(answers)


class DriftCollector(Collector):
    """The summaries as counters, read at scrape time."""

    def __init__(self, summary: DriftSummary) -> None:
        self._summary = summary

    def collect(self) -> Iterator[Metric]:
        self._summary.flush()
        s, model = self._summary, self._summary.model
        rows = CounterMetricFamily(
            _family(names.DRIFT_ROWS),
            "Answered rows summarised for drift (every drift.sample_rate-th request's rows).",
            labels=["model"],
        )
        rows.add_metric([model], s.rows)
        yield rows
        student_rows = CounterMetricFamily(
            _family(names.DRIFT_STUDENT_ROWS),
            "Of those, rows the student answered (what the prediction summaries count).",
            labels=["model"],
        )
        student_rows.add_metric([model], s.student_rows)
        yield student_rows
        values = CounterMetricFamily(
            _family(names.DRIFT_INPUT_VALUES),
            "Values of a float input counted per block of features and bin (bin: its upper "
            "edge; counts per bin, not cumulative).",
            labels=["model", "input", "block", "bin"],
        )
        for name, histogram in s.floats.items():
            _add_blocks(values, [model, name], histogram)
        yield values
        lengths = CounterMetricFamily(
            _family(names.DRIFT_SEQUENCE_LENGTH),
            "Rows of an integer input by length (elements other than its pad_value), in "
            "powers-of-two buckets (bin: the bucket's largest length).",
            labels=["model", "input", "bin"],
        )
        ids = CounterMetricFamily(
            _family(names.DRIFT_TOKEN_IDS),
            "Elements of an integer input by value (token id), in powers-of-two buckets.",
            labels=["model", "input", "bin"],
        )
        for name, tokens in s.tokens.items():
            for label, length, count in zip(power_labels(), tokens.lengths.tolist(),
                                            tokens.ids.tolist(), strict=True):  # fmt: skip
                lengths.add_metric([model, name, label], length)
                ids.add_metric([model, name, label], count)
        yield lengths
        yield ids
        predictions = CounterMetricFamily(
            _family(names.DRIFT_PREDICTIONS),
            "The student's answers by predicted class (bin: the class, or the first of a range "
            "of classes) for a classifier; else the task output's values per block and bin.",
            labels=["model", "output", "block", "bin"],
        )
        if s.classes is not None:
            for label, count in zip(s.classes.class_labels(), s.classes.predicted.tolist(),
                                    strict=True):  # fmt: skip
                predictions.add_metric([model, s.output, "0", label], count)
        elif s.values is not None:
            _add_blocks(predictions, [model, s.output], s.values)
        yield predictions
        if s.classes is not None:
            confidence = CounterMetricFamily(
                _family(names.DRIFT_CONFIDENCE),
                "A classifier student's answers by top-1 confidence, in tenths (bin: upper edge).",
                labels=["model", "bin"],
            )
            for label, count in zip(bin_labels(CONFIDENCE_EDGES), s.classes.confidence.tolist(),
                                    strict=True):  # fmt: skip
                confidence.add_metric([model, label], count)
            yield confidence
            total = CounterMetricFamily(
                _family(names.DRIFT_CONFIDENCE_SUM),
                "Sum of a classifier's top-1 confidence over the summarised rows.",
                labels=["model"],
            )
            total.add_metric([model], s.classes.confidence_sum)
            yield total


def _family(sample_name: str) -> str:
    """CounterMetricFamily appends ``_total`` itself."""
    return sample_name.removesuffix("_total")


def _add_blocks(family: CounterMetricFamily, labels: list[str], histogram: _Histogram) -> None:
    bins = bin_labels(histogram.edges.tolist())
    for block, counts in enumerate(histogram.by_block().tolist()):
        for label, count in zip(bins, counts, strict=True):
            family.add_metric([*labels, str(block), label], count)


def drift_summary(
    settings: GatewaySettings, signature: Signature, output: str, metrics: GatewayMetrics
) -> DriftSummary | None:
    """The model's summaries, registered with its metrics; None when ``drift.enabled`` is off."""
    config = settings.drift
    if not config.enabled:
        return None
    unknown = sorted(set(config.inputs) - {spec.name for spec in signature.inputs})
    if unknown:
        raise DriftMismatch(f"drift.inputs: the model has no input {', '.join(unknown)}")
    task = settings.task
    if isinstance(task, ClassificationTask):
        kind = OutputKind(output, True, task.scores == "probabilities")
    else:
        kind = OutputKind(output, False)
    pads = {name: each.pad_value for name, each in settings.inputs.items()}
    summary = DriftSummary(settings.model, signature, kind, config, pads)
    metrics.add_collector(DriftCollector(summary))
    return summary
