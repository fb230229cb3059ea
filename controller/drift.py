"""Drift statistics: the gateways' distribution summaries (``gateway.drift``) in a window, compared
with a reference window, per feature, with a stated rule for many features and many looks.

The statistic is the population stability index, PSI = sum_i (p_i - q_i) ln(p_i / q_i) over the
bins (p: now, q: the reference; each bin's count plus half a count, over the bins either window
has seen). PSI is Jeffreys' divergence, so when nothing changed it is noise of a known size:
with ``n`` rows now and ``m`` in the reference, PSI ~ (1/n + 1/m) chi^2_(B-1) for B bins (the
two-sample Pearson statistic it equals to second order), whose mean (B-1)(1/n + 1/m) is the
upward bias of a sample's PSI. A feature **drifts** when its PSI less that bias is above the
policy's threshold (the size of shift that matters: ``max_input_psi``, ``max_prediction_psi``)
and its PSI is above the noise's quantile at level

    alpha_look / F,   alpha_look = alpha / (k (k + 1)) at the k-th look of a window,

Bonferroni over the F features compared, and an alpha-spending sequence over looks that sums to
alpha: when nothing drifts, the chance that any feature ever alarms in a window is at most
alpha (up to the chi-square approximation), however long the window runs and however often it
is looked at. ``n`` and ``m`` count rows (examples), not values: values of one row (pixels of
one image, tokens of one text) are not independent, and a pooled proportion's variance is at
most that of ``rows`` independent draws, so counting rows keeps the rule conservative.

Accuracy without labels (classification): the student's mean top-1 confidence now against the
reference's, scaled by the reference's measured accuracy over its mean confidence (the
reference calibrates the confidence; without a measured accuracy the confidence is taken as
calibrated), judged with ``controller.sequences.bounded_mean``'s anytime-valid interval.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from scipy.special import chdtri

from controller import sequences
from controller.analysis import GateResult, Verdict
from controller.promtext import Snapshot, select
from gateway import metric_names as names

FeatureKey = tuple[str, ...]
"""("input", name, block), ("length", name), ("tokens", name) or ("prediction", output, block)."""
PSEUDO_COUNT = 0.5


@dataclass(frozen=True)
class DriftCounts:
    """The drift counters of one model in a window, summed over gateways."""

    rows: float = 0.0
    student_rows: float = 0.0
    inputs: dict[FeatureKey, dict[str, float]] = field(default_factory=dict)
    predictions: dict[FeatureKey, dict[str, float]] = field(default_factory=dict)
    confidence_sum: float = 0.0

    @classmethod
    def of(cls, snapshot: Snapshot, model: str) -> DriftCounts:
        inputs: dict[FeatureKey, dict[str, float]] = {}
        predictions: dict[FeatureKey, dict[str, float]] = {}
        for (name, pairs), value in snapshot.items():
            labels = dict(pairs)
            if labels.get("model") != model:
                continue
            if name == names.DRIFT_INPUT_VALUES:
                bins = inputs.setdefault(("input", labels["input"], labels["block"]), {})
            elif name == names.DRIFT_SEQUENCE_LENGTH:
                bins = inputs.setdefault(("length", labels["input"]), {})
            elif name == names.DRIFT_TOKEN_IDS:
                bins = inputs.setdefault(("tokens", labels["input"]), {})
            elif name == names.DRIFT_PREDICTIONS:
                bins = predictions.setdefault(("prediction", labels["output"], labels["block"]), {})
            else:
                continue
            bins[labels["bin"]] = bins.get(labels["bin"], 0.0) + value
        return cls(
            rows=select(snapshot, names.DRIFT_ROWS, model=model),
            student_rows=select(snapshot, names.DRIFT_STUDENT_ROWS, model=model),
            inputs=inputs,
            predictions=predictions,
            confidence_sum=select(snapshot, names.DRIFT_CONFIDENCE_SUM, model=model),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "student_rows": self.student_rows,
            "inputs": [[list(key), bins] for key, bins in self.inputs.items()],
            "predictions": [[list(key), bins] for key, bins in self.predictions.items()],
            "confidence_sum": self.confidence_sum,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> DriftCounts:
        def features(rows: object) -> dict[FeatureKey, dict[str, float]]:
            assert isinstance(rows, list)
            return {tuple(key): dict(bins) for key, bins in rows}

        return cls(
            rows=float(data["rows"]),  # type: ignore[arg-type]
            student_rows=float(data["student_rows"]),  # type: ignore[arg-type]
            inputs=features(data["inputs"]),
            predictions=features(data["predictions"]),
            confidence_sum=float(data["confidence_sum"]),  # type: ignore[arg-type]
        )


def psi(current: Mapping[str, float], reference: Mapping[str, float]) -> tuple[float, int]:
    """PSI of two binned counts, and the number of bins it compared (those either has seen)."""
    seen = [b for b in current.keys() | reference.keys()
            if current.get(b, 0.0) > 0 or reference.get(b, 0.0) > 0]  # fmt: skip
    if len(seen) < 2:
        return 0.0, len(seen)
    now_total = sum(current.get(b, 0.0) for b in seen) + PSEUDO_COUNT * len(seen)
    ref_total = sum(reference.get(b, 0.0) for b in seen) + PSEUDO_COUNT * len(seen)
    value = 0.0
    for b in seen:
        p = (current.get(b, 0.0) + PSEUDO_COUNT) / now_total
        q = (reference.get(b, 0.0) + PSEUDO_COUNT) / ref_total
        value += (p - q) * math.log(p / q)
    return value, len(seen)


def look_alpha(alpha: float, look: int) -> float:
    """The error the k-th look of a window may spend: alpha / (k (k + 1)), summing to alpha."""
    return alpha / (look * (look + 1))


def noise_level(bins: int, rows: float, reference_rows: float, alpha: float) -> float:
    """The PSI that two samples of one distribution exceed with chance ``alpha``."""
    if bins < 2:
        return math.inf
    return (1.0 / rows + 1.0 / reference_rows) * _chi2_isf(alpha, bins - 1)


@functools.lru_cache(maxsize=4096)
def _chi2_isf(alpha: float, degrees: int) -> float:
    return float(chdtri(degrees, alpha))  # chi2.isf, without importing scipy.stats


@dataclass(frozen=True)
class FeatureDrift:
    feature: FeatureKey
    psi: float
    noise: float  # the noise level at this look's per-feature alpha
    bias: float  # what noise adds to PSI on average: (B - 1)(1/n + 1/m)

    def alarm_level(self, threshold: float) -> float:
        """Above the noise, and above the threshold once the noise's mean is taken off: a
        small sample's PSI runs high, and a shift under the threshold must not pass it."""
        return max(threshold + self.bias, self.noise)

    def describe(self) -> str:
        return " ".join(self.feature)


def judge_drift(
    gate: str,
    current: Mapping[FeatureKey, Mapping[str, float]],
    reference: Mapping[FeatureKey, Mapping[str, float]],
    rows: float,
    reference_rows: float,
    threshold: float,
    alpha: float,
    look: int,
    min_rows: float,
) -> GateResult:
    """FAIL when any feature drifts (see the module's rule), naming the worst; INCONCLUSIVE
    before ``min_rows`` rows (or without a reference); PASS otherwise."""
    features = sorted(reference.keys() | current.keys())
    if rows < min_rows or reference_rows <= 0 or not features:
        why = "no reference" if reference_rows <= 0 else f"{rows:.0f} of {min_rows:.0f} rows"
        return GateResult(gate, Verdict.INCONCLUSIVE, math.nan, math.nan, math.nan, threshold,
                          rows, why)  # fmt: skip
    per_feature = look_alpha(alpha, look) / len(features)
    drifts = []
    for key in features:
        value, bins = psi(current.get(key, {}), reference.get(key, {}))
        bias = max(bins - 1, 0) * (1.0 / rows + 1.0 / reference_rows)
        drifts.append(FeatureDrift(key, value, noise_level(bins, rows, reference_rows,
                                                           per_feature), bias))  # fmt: skip
    worst = max(drifts, key=lambda d: d.psi / d.alarm_level(threshold))
    level = worst.alarm_level(threshold)
    rule = f"alpha {alpha:g} over {len(features)} features and look {look}"
    numbers = f"PSI {worst.psi:.3f}, alarm above {level:.3f} ({rule})"
    if worst.psi > level:
        return GateResult(gate, Verdict.FAIL, worst.psi, math.nan, level, threshold, rows,
                          f"{worst.describe()} drifted: {numbers}")  # fmt: skip
    return GateResult(gate, Verdict.PASS, worst.psi, math.nan, level, threshold, rows,
                      f"no feature drifted; closest {worst.describe()}: {numbers}")  # fmt: skip


def judge_estimated_accuracy(
    current: DriftCounts,
    reference: DriftCounts,
    reference_accuracy: float | None,
    threshold: float,
    alpha: float,
    n_star: float,
    min_rows: float,
) -> GateResult:
    """``max_estimated_accuracy_drop``: the reference's accuracy minus the accuracy its
    calibration predicts from the student's confidence now. The reference's mean confidence is
    a sample too (often fewer rows than the window): it gets its own interval, at half of
    ``alpha`` (the window's mean the other half), and the drop's interval spans both. The
    reference's accuracy (from labels or agreement) is taken as known: its count is not kept."""
    gate = "max_estimated_accuracy_drop"
    n, m = current.student_rows, reference.student_rows
    if n < min_rows or m <= 0:
        why = "no reference" if m <= 0 else f"{n:.0f} of {min_rows:.0f} student rows"
        return GateResult(gate, Verdict.INCONCLUSIVE, math.nan, math.nan, math.nan, threshold,
                          n, why)  # fmt: skip
    reference_confidence = reference.confidence_sum / m
    accuracy = reference_confidence if reference_accuracy is None else reference_accuracy
    scale = accuracy / max(reference_confidence, 1e-12)
    low, high = sequences.bounded_mean(current.confidence_sum, n, 0.0, 1.0, alpha / 2, n_star)
    ref_low, ref_high = sequences.bounded_mean(reference.confidence_sum, m, 0.0, 1.0, alpha / 2,
                                               n_star)  # fmt: skip
    estimate = scale * current.confidence_sum / n
    drop = accuracy - estimate
    if reference_accuracy is None:  # the drop is the reference's confidence less the window's
        drop_low, drop_high = ref_low - high, ref_high - low
    else:  # accuracy x (1 - window / reference confidence), at the ratio's extremes
        drop_low = accuracy * (1.0 - high / max(ref_low, 1e-12))
        drop_high = accuracy * (1.0 - low / max(ref_high, 1e-12))
    confidence = current.confidence_sum / n
    numbers = (f"estimated {estimate:.3f} against {accuracy:.3f} (confidence {confidence:.3f}, "
               f"reference {reference_confidence:.3f})")  # fmt: skip
    if drop_low > threshold:
        verdict, what = Verdict.FAIL, "drop above threshold"
    elif drop_high <= threshold:
        verdict, what = Verdict.PASS, "drop below threshold"
    else:
        verdict, what = Verdict.INCONCLUSIVE, "interval straddles threshold"
    return GateResult(gate, verdict, drop, drop_low, drop_high, threshold, n, f"{what}: {numbers}")


def judge_drift_recent(
    gate: str,
    window: tuple[Mapping[FeatureKey, Mapping[str, float]], float],
    recent: tuple[Mapping[FeatureKey, Mapping[str, float]], float] | None,
    reference: tuple[Mapping[FeatureKey, Mapping[str, float]], float],
    threshold: float,
    alpha: float,
    look: int,
    min_rows: float,
) -> GateResult:
    """``judge_drift`` on the whole window and on its most recent part (the last few looks), each
    at half the look's alpha (Bonferroni): a shift that starts late in a long window is found in
    the recent part before the window's older traffic stops diluting it; a small one still adds
    up over the whole window. Without a recent part, the window alone at the full alpha."""
    (features, rows), (ref_features, ref_rows) = window, reference
    parts = 1 if recent is None else 2
    result = judge_drift(gate, features, ref_features, rows, ref_rows, threshold, alpha / parts,
                         look, min_rows)  # fmt: skip
    if recent is None or result.verdict is Verdict.FAIL:
        return result
    latest = judge_drift(gate, recent[0], ref_features, recent[1], ref_rows, threshold,
                         alpha / parts, look, min_rows)  # fmt: skip
    if latest.verdict is Verdict.FAIL:
        return replace(latest, reason=f"recently {latest.reason}")
    return result
