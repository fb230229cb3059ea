"""Drift summaries (gateway/drift.py): what a request adds to the counters, checked against
counts made by hand, for a wide float input, a two-input token model, a regression output and a
classifier; sampling, the series bound and the config's checks."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway import metric_names as names
from gateway.config import GatewaySettings
from gateway.drift import (
    BIN_AT_ONCE_BYTES,
    SIGNED_LOG_EDGES,
    DriftCollector,
    DriftMismatch,
    DriftSummary,
    OutputKind,
    drift_summary,
)
from gateway.drift_config import DriftConfig, DriftInputConfig
from gateway.metrics import GatewayMetrics
from gateway.signature import Signature, TensorSpec

DIGITS = Signature(
    (TensorSpec("input", "FP32", (-1, 64)),), (TensorSpec("logits", "FP32", (-1, 10)),)
)
TEXT = Signature(
    (TensorSpec("input_ids", "INT64", (-1, -1)), TensorSpec("attention_mask", "INT64", (-1, -1))),
    (TensorSpec("logits", "FP32", (-1, 4)),),
)
REGRESSION = Signature(
    (TensorSpec("features", "FP32", (-1, 6)),), (TensorSpec("value", "FP32", (-1, 1)),)
)


def _registered(summary: DriftSummary) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(DriftCollector(summary))
    return registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def _bin_of(value: float, edges: tuple[float, ...] = SIGNED_LOG_EDGES) -> str:
    """The label of the bin holding ``value``: its first edge at or above it, by a plain loop."""
    for edge in edges:
        if value <= edge:
            return f"{edge:.6g}"
    return "+Inf"


def test_a_wide_float_input_is_counted_per_block_of_features() -> None:
    summary = DriftSummary(
        "digits", DIGITS, OutputKind("logits", True), DriftConfig(sample_rate=1.0), {}
    )
    rng = np.random.default_rng(3)
    requests = [rng.uniform(0, 16, (rows, 64)).astype(np.float32) for rows in (1, 3, 2)]
    requests[0][0, :8] = 0.0  # exact zeros land in the (-0.001, 0] bin
    for x in requests:
        summary.observe({"input": x}, {"logits": rng.standard_normal((len(x), 10))}, True)
    registry = _registered(summary)
    expected: dict[tuple[str, str], int] = {}
    for x in requests:
        for row in x:
            for feature, value in enumerate(row.tolist()):
                key = (str(feature // 4), _bin_of(value))  # 64 features in 16 blocks of 4
                expected[key] = expected.get(key, 0) + 1
    for (block, label), count in expected.items():
        found = _value(registry, names.DRIFT_INPUT_VALUES, model="digits", input="input",
                       block=block, bin=label)  # fmt: skip
        assert found == count, (block, label)
    zeros = [_value(registry, names.DRIFT_INPUT_VALUES, model="digits", input="input",
                    block=block, bin="0") for block in ("0", "1")]  # fmt: skip
    assert zeros == [4, 4]  # features 0-3 and 4-7
    assert _value(registry, names.DRIFT_ROWS, model="digits") == 6
    series = [
        s for m in registry.collect() for s in m.samples if s.name == names.DRIFT_INPUT_VALUES
    ]
    assert len(series) == 16 * (len(SIGNED_LOG_EDGES) + 1)  # every bin exists, at 0 or more


def test_token_inputs_count_lengths_and_id_buckets() -> None:
    summary = DriftSummary(
        "text", TEXT, OutputKind("logits", True), DriftConfig(sample_rate=1.0), {}
    )
    ids_a = np.array([[5, 9, 0, 0], [1, 2, 3, 40]])  # lengths 2 and 4 (0 is padding)
    ids_b = np.array([[100, 7, 7, 7, 7, 7, 0, 0, 0]])  # length 6
    for ids in (ids_a, ids_b):
        mask = (ids != 0).astype(np.int64)
        summary.observe(
            {"input_ids": ids, "attention_mask": mask}, {"logits": np.zeros((len(ids), 4))}, True
        )
    registry = _registered(summary)

    def lengths(label: str) -> float:
        return _value(
            registry, names.DRIFT_SEQUENCE_LENGTH, model="text", input="input_ids", bin=label
        )

    def tokens(label: str) -> float:
        return _value(registry, names.DRIFT_TOKEN_IDS, model="text", input="input_ids", bin=label)

    assert (lengths("3"), lengths("7")) == (1, 2)  # 2 in 2-3; 4 and 6 in 4-7
    # ids: 0 x5 (padding), 1, 2 3, 5 7 7 7 7 7, 9, 40, 100
    assert [tokens(b) for b in ("0", "1", "3", "7", "15", "63", "127")] == [5, 1, 2, 6, 1, 1, 1]
    # the mask: lengths alike, its values all 0 or 1
    assert (
        _value(registry, names.DRIFT_TOKEN_IDS, model="text", input="attention_mask", bin="1") == 12
    )


def test_a_classifier_counts_its_predicted_class_and_confidence() -> None:
    summary = DriftSummary(
        "digits", DIGITS, OutputKind("logits", True), DriftConfig(sample_rate=1.0), {}
    )
    logits = np.array([[0.0] * 10, [5.0] + [0.0] * 9, [0.0] * 9 + [9.0]])
    summary.observe({"input": np.zeros((3, 64), np.float32)}, {"logits": logits}, True)
    summary.observe({"input": np.zeros((1, 64), np.float32)}, {"logits": logits[:1]}, False)
    registry = _registered(summary)
    soft = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    confidence = soft.max(axis=1)  # 0.1, 0.94, 0.99
    assert (
        _value(
            registry, names.DRIFT_PREDICTIONS, model="digits", output="logits", block="0", bin="0"
        )
        == 2
    )
    assert (
        _value(
            registry, names.DRIFT_PREDICTIONS, model="digits", output="logits", block="0", bin="9"
        )
        == 1
    )
    assert _value(registry, names.DRIFT_CONFIDENCE, model="digits", bin="0.1") == 1
    assert _value(registry, names.DRIFT_CONFIDENCE, model="digits", bin="+Inf") == 2
    assert _value(registry, names.DRIFT_CONFIDENCE_SUM, model="digits") == pytest.approx(
        confidence.sum()
    )
    # the teacher's answer (a fallback) adds to the inputs, not to the student's predictions
    assert _value(registry, names.DRIFT_ROWS, model="digits") == 4
    assert _value(registry, names.DRIFT_STUDENT_ROWS, model="digits") == 3


def test_a_regression_output_is_counted_as_values() -> None:
    summary = DriftSummary(
        "price", REGRESSION, OutputKind("value", False), DriftConfig(sample_rate=1.0), {}
    )
    values = np.array([[-2.0], [0.5], [0.5], [2000.0]], dtype=np.float32)
    summary.observe({"features": np.ones((4, 6), np.float32)}, {"value": values}, True)
    registry = _registered(summary)
    for value, count in ((-2.0, 1), (0.5, 2), (2000.0, 1)):
        assert _value(registry, names.DRIFT_PREDICTIONS, model="price", output="value", block="0",
                      bin=_bin_of(value)) == count  # fmt: skip
    assert _bin_of(2000.0) == "+Inf"


def test_an_input_with_edges_of_its_own_and_a_sample_of_requests() -> None:
    config = DriftConfig(sample_rate=0.25, inputs={"features": DriftInputConfig(edges=[0.0, 1.0])})
    summary = DriftSummary("price", REGRESSION, OutputKind("value", False), config, {})
    for n in range(8):  # every 4th request is summarised: the 4th and the 8th
        x = np.full((1, 6), float(n), dtype=np.float32)
        summary.observe({"features": x}, {"value": np.zeros((1, 1), np.float32)}, True)
    registry = _registered(summary)
    assert _value(registry, names.DRIFT_ROWS, model="price") == 2
    assert _value(registry, names.DRIFT_INPUT_VALUES, model="price", input="features", block="0",
                  bin="+Inf") == 2  # fmt: skip
    total = sum(
        _value(
            registry,
            names.DRIFT_INPUT_VALUES,
            model="price",
            input="features",
            block=str(b),
            bin=label,
        )
        for b in range(6)
        for label in ("0", "1", "+Inf")
    )
    assert total == 12  # 2 rows of 6 features (3 and 7: both above 1)


def test_the_drift_config_is_checked_against_the_model(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="edges must rise"):
        DriftInputConfig(edges=[1.0, 0.5])
    settings = GatewaySettings.model_validate({"drift": {"inputs": {"pixels": {"edges": [0.0]}}}})
    metrics = GatewayMetrics(CollectorRegistry(), "digits", {"teacher": 1.0, "student": 0.5})
    with pytest.raises(DriftMismatch, match="no input pixels"):
        drift_summary(settings, DIGITS, "logits", metrics)
    off = GatewaySettings.model_validate({"drift": {"enabled": False}})
    assert drift_summary(off, DIGITS, "logits", metrics) is None


def test_pending_requests_keep_copies_of_the_summarised_inputs_never_the_request_body() -> None:
    """A binary request's arrays are views of its whole body (here 8 MiB of BYTES beside 64
    floats), a batch's answer a view of the batch's output: neither stays alive until a flush."""
    signature = Signature(
        (TensorSpec("pixels", "FP32", (-1, 64)), TensorSpec("blob", "BYTES", (-1,))),
        (TensorSpec("logits", "FP32", (-1, 10)),),
    )
    summary = DriftSummary(
        "m", signature, OutputKind("logits", True), DriftConfig(sample_rate=1.0), {}
    )
    body = np.zeros(8 << 20, dtype=np.uint8)  # the decoded body the arrays point into
    batch = np.ones((32, 10), dtype=np.float32)  # a dynamic batch's output
    for i in range(3):
        pixels = body[: 64 * 4].view(np.float32).reshape(1, 64)
        summary.observe({"pixels": pixels, "blob": body[256:]}, {"logits": batch[i : i + 1]}, True)
    assert summary.pending_bytes == 3 * (64 + 10) * 4  # what is kept, counted
    for inputs, answer, _ in summary._pending:
        assert set(inputs) == {"pixels"}
        assert not np.shares_memory(inputs["pixels"], body)
        assert not np.shares_memory(answer, batch)
    summary.flush()
    assert summary.rows == 3 and summary.pending_bytes == 0


def test_a_request_past_the_bound_is_binned_at_once() -> None:
    summary = DriftSummary(
        "m", DIGITS, OutputKind("logits", True), DriftConfig(sample_rate=1.0), {}
    )
    small = {"input": np.ones((1, 64), dtype=np.float32)}
    summary.observe(small, {"logits": np.ones((1, 10), dtype=np.float32)}, True)
    assert summary.rows == 0 and summary.pending_bytes > 0  # one small request: kept
    rows = BIN_AT_ONCE_BYTES // (64 * 4) + 1
    large = {"input": np.ones((rows, 64), dtype=np.float32)}
    summary.observe(large, {"logits": np.ones((rows, 10), dtype=np.float32)}, True)
    assert summary.rows == rows + 1 and summary.pending_bytes == 0  # both binned, none copied
