"""Drift statistics (controller/drift.py): PSI by hand, the false-alarm rule measured by Monte
Carlo over many features and looks, detection of a real shift, the threshold as the size that
matters, counters read from a real gateway.drift exposition, and the label-free accuracy gate."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.analysis import Verdict
from controller.drift import (
    DriftCounts,
    FeatureKey,
    judge_drift,
    judge_estimated_accuracy,
    noise_level,
    psi,
)
from controller.promtext import parse
from gateway.drift import DriftCollector, DriftSummary, OutputKind
from gateway.drift_config import DriftConfig
from gateway.signature import Signature, TensorSpec

ALPHA = 0.05


def test_psi_is_the_symmetric_divergence_of_the_smoothed_proportions() -> None:
    now, ref = {"a": 30.0, "b": 10.0}, {"a": 20.0, "b": 20.0, "c": 0.0}
    p = np.array([30.5, 10.5]) / 41.0
    q = np.array([20.5, 20.5]) / 41.0
    value, bins = psi(now, ref)
    assert bins == 2  # "c" was never seen: not a bin of the comparison
    assert value == pytest.approx(float(((p - q) * np.log(p / q)).sum()))
    assert psi(now, now)[0] == 0.0


def _windows(rng: np.random.Generator, probabilities: np.ndarray, rows: int, features: int
             ) -> np.ndarray:  # fmt: skip
    """[features, bins] counts of ``rows`` rows, each feature drawn independently."""
    return rng.multinomial(rows, probabilities, size=features).astype(float)


def _alarms(current: np.ndarray, reference: np.ndarray, rows: float, ref_rows: float, look: int,
            threshold: float = 0.0) -> bool:  # fmt: skip
    labels = [str(b) for b in range(current.shape[1])]

    def features(counts: np.ndarray) -> dict[FeatureKey, Mapping[str, float]]:
        return {("input", "x", str(f)): dict(zip(labels, row, strict=True))
                for f, row in enumerate(counts.tolist())}  # fmt: skip

    now, ref = features(current), features(reference)
    result = judge_drift("max_input_psi", now, ref, rows, ref_rows, threshold, ALPHA, look, 1)
    return result.verdict is Verdict.FAIL


def test_without_drift_a_window_of_many_looks_alarms_at_most_alpha_of_the_time() -> None:
    """8 features of 20 bins, a reference of 2,000 rows, 8 looks as the window grows by 250
    rows each; the threshold at 0, so only the noise rule stands between noise and an alarm."""
    rng = np.random.default_rng(31)
    probabilities = rng.dirichlet(np.ones(20) * 0.7)  # some bins rare: the hard case
    runs, alarmed = 200, 0
    for _ in range(runs):
        reference = _windows(rng, probabilities, 2000, 8)
        current = np.zeros_like(reference)
        for look in range(1, 9):
            current += _windows(rng, probabilities, 250, 8)
            if _alarms(current, reference, 250.0 * look, 2000.0, look):
                alarmed += 1
                break
    assert alarmed / runs <= ALPHA  # measured: 0 of 200 (the rule is conservative)


def test_a_shift_is_detected_and_a_small_one_below_the_threshold_is_not() -> None:
    rng = np.random.default_rng(7)
    base = np.full(10, 0.1)
    shifted = base.copy()
    shifted[0], shifted[9] = 0.02, 0.18  # PSI ~ 0.17
    reference = _windows(rng, base, 5000, 4)
    current = _windows(rng, shifted, 1000, 4)
    assert _alarms(current, reference, 1000, 5000, look=1, threshold=0.1)
    # the same shift is real but smaller than a threshold of 0.25: no alarm at any sample size
    big = _windows(rng, shifted, 100_000, 4)
    assert not _alarms(big, reference, 100_000, 5000, look=1, threshold=0.25)


def test_the_noise_level_shrinks_with_rows_and_grows_with_looks_and_features() -> None:
    assert noise_level(20, 1000, 1000, 0.05) > noise_level(20, 10_000, 10_000, 0.05)
    assert noise_level(20, 1000, 1000, 0.05 / 16 / 110) > noise_level(20, 1000, 1000, 0.05 / 16)
    assert math.isinf(noise_level(1, 1000, 1000, 0.05))


def test_counts_read_from_a_gateway_exposition_and_kept_as_json() -> None:
    signature = Signature(
        (TensorSpec("pixels", "FP32", (-1, 4)), TensorSpec("ids", "INT64", (-1, -1))),
        (TensorSpec("logits", "FP32", (-1, 3)),),
    )
    summary = DriftSummary(
        "m", signature, OutputKind("logits", True), DriftConfig(sample_rate=1.0), {}
    )
    inputs = {"pixels": np.array([[0.0, 0.5, 2.0, 50.0]], np.float32), "ids": np.array([[3, 9, 0]])}
    summary.observe(inputs, {"logits": np.array([[0.0, 2.0, 0.0]])}, True)
    registry = CollectorRegistry()
    registry.register(DriftCollector(summary))
    counts = DriftCounts.of(parse(generate_latest(registry).decode()), "m")
    assert (counts.rows, counts.student_rows) == (1, 1)
    assert counts.inputs[("input", "pixels", "2")]["3.16228"] == 1  # 2.0 in (1, 3.16]
    assert counts.inputs[("length", "ids")]["3"] == 1  # 2 tokens
    assert counts.predictions[("prediction", "logits", "0")]["1"] == 1
    assert counts.confidence_sum == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    assert DriftCounts.from_json(counts.to_json()) == counts
    assert DriftCounts.of(parse(generate_latest(registry).decode()), "other").rows == 0


def test_accuracy_without_labels_follows_the_confidence() -> None:
    reference = DriftCounts(student_rows=5000, confidence_sum=0.9 * 5000)
    same = DriftCounts(student_rows=3000, confidence_sum=0.9 * 3000)
    lower = DriftCounts(student_rows=3000, confidence_sum=0.7 * 3000)

    def verdict(current: DriftCounts, accuracy: float | None = None) -> Verdict:
        return judge_estimated_accuracy(current, reference, accuracy, 0.05, ALPHA, 500, 200).verdict

    assert verdict(same) is Verdict.PASS
    assert verdict(lower) is Verdict.FAIL
    # calibrated on a reference accuracy of 0.95: 0.7 confidence estimates 0.74, 21 points down
    result = judge_estimated_accuracy(lower, reference, 0.95, 0.05, ALPHA, 500, 200)
    assert result.value == pytest.approx(0.95 - 0.95 / 0.9 * 0.7)
    assert verdict(DriftCounts(student_rows=50, confidence_sum=10)) is Verdict.INCONCLUSIVE


def test_the_reference_confidence_s_own_sampling_error_widens_the_interval() -> None:
    """A 10-minute reference of 250 rows beside an hour's 100,000: the interval is at least as
    wide as the reference's own (before: only the window's, about 0.01 wide at this size)."""
    window = DriftCounts(student_rows=100_000, confidence_sum=0.86 * 100_000)
    small = DriftCounts(student_rows=250, confidence_sum=0.9 * 250)
    large = DriftCounts(student_rows=100_000, confidence_sum=0.9 * 100_000)
    judged = {name: judge_estimated_accuracy(window, reference, None, 0.03, ALPHA, 500, 200)
              for name, reference in (("small", small), ("large", large))}  # fmt: skip
    assert judged["large"].verdict is Verdict.FAIL  # 0.04 down, measured closely
    assert judged["small"].verdict is Verdict.INCONCLUSIVE  # 0.04 down, give or take 0.05
    width = judged["small"].high - judged["small"].low
    assert width > 0.05
