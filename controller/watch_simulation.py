"""Post-promotion scenarios for the watch's drift rule (``controller.drift``), run through the real
``judge_drift_recent`` on simulated bin counts: false alarms per day on unshifted traffic, and
the delay from a shift's start to the first alarm for each shift size.

Traffic: ``rows_per_second`` summarised rows, a look every ``interval`` s, windows of
``window`` s; 16 features of 28 bins (a digits-like input in 16 blocks), each row's features
drawn independently from a fixed profile; the reference is one hour of that traffic. A shift
moves a share of every feature's mass to a shifted profile, sized by the PSI it gives. Each
window spends the alpha ``WatchPolicy.window_alphas`` gives it (the policy's
``false_alarms_per_day`` over the day's windows, or ``1 - confidence``); an alarm starts a new
window, as the watch's ``alert`` does, and the unshifted days count every alarm.

    distill-canary simulate --post-promotion      (python -m controller.watch_simulation)
"""

from __future__ import annotations

import argparse
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from controller.analysis import Verdict
from controller.drift import FeatureKey, judge_drift_recent, psi
from controller.watch_policy import DAY_SECONDS, WatchPolicy

FEATURES, BINS = 16, 28
SHIFTS = (0.15, 0.3, 0.5, 1.0)
"""Shift sizes, as PSI: one under the default threshold (0.25), three above it."""


@dataclass(frozen=True)
class Setting:
    rows_per_second: float = 10.0
    interval: float = 30.0
    window: float = 3600.0
    threshold: float = 0.25
    recent: float = 300.0  # the watch's recent_seconds
    alpha: float = 0.05  # per window
    min_rows: int = 200

    @classmethod
    def of(cls, watch: WatchPolicy, confidence: float, threshold: float | None = None,
           rows_per_second: float = 10.0) -> Setting:  # fmt: skip
        """The watch's input-drift check as a policy configures it (its share of the window's
        alpha: the drift checks split theirs evenly, as ``judge_window`` does)."""
        drift_alpha, _ = watch.window_alphas(confidence)
        checks = [c for c in (watch.max_input_psi, watch.max_prediction_psi,
                              watch.max_estimated_accuracy_drop) if c is not None]  # fmt: skip
        return cls(rows_per_second, watch.interval_seconds, watch.window_seconds,
                   (watch.max_input_psi or 0.25) if threshold is None else threshold,
                   watch.recent_seconds, drift_alpha / max(len(checks), 1),
                   watch.min_rows)  # fmt: skip

    def bound_per_day(self) -> float:
        """What the rule promises: at most alpha a window, over a day's windows."""
        return self.alpha * DAY_SECONDS / self.window


def _as_features(counts: np.ndarray) -> dict[FeatureKey, dict[str, float]]:
    return {("input", "x", str(f)): {str(b): float(c) for b, c in enumerate(row)}
            for f, row in enumerate(counts)}  # fmt: skip


def _profiles(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    base = rng.dirichlet(np.ones(BINS), size=FEATURES)
    return base, np.roll(base, 3, axis=1)  # the shifted profile: mass moved three bins up


def mixed(base: np.ndarray, shifted: np.ndarray, share: float) -> np.ndarray:
    return (1 - share) * base + share * shifted


def share_for_psi(base: np.ndarray, shifted: np.ndarray, target: float) -> float:
    """The shifted share whose largest per-feature PSI (in proportions) is ``target``."""
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        p = mixed(base, shifted, middle)
        value = max([psi(dict(enumerate(map(float, p[f] * 1e6))),  # type: ignore[arg-type]
                             dict(enumerate(map(float, base[f] * 1e6))))[0]  # type: ignore[arg-type]
                         for f in range(FEATURES)])  # fmt: skip
        low, high = (middle, high) if value < target else (low, middle)
    return (low + high) / 2


def _draw(rng: np.random.Generator, profile: np.ndarray, rows: int) -> np.ndarray:
    return np.stack([rng.multinomial(rows, profile[f]) for f in range(FEATURES)]).astype(float)


def alarms(setting: Setting, rng: np.random.Generator, seconds: float, share: float,
           shift_at: float, first_only: bool = False) -> list[float]:  # fmt: skip
    """Watches ``seconds`` of traffic whose shifted share is ``share`` from ``shift_at`` on;
    the times of its alarms (each starts a new window), or of the first only."""
    base, shifted = _profiles(np.random.default_rng(0))
    reference_rows = int(setting.rows_per_second * 3600)
    reference = _as_features(_draw(rng, base, reference_rows))
    per_look = int(setting.rows_per_second * setting.interval)
    now, window_start, look = 0.0, 0.0, 0
    counts = np.zeros((FEATURES, BINS))
    recent_looks = round(setting.recent / setting.interval)
    history: deque[np.ndarray] = deque(maxlen=max(recent_looks, 1))
    found: list[float] = []
    while now < seconds:
        now += setting.interval
        profile = mixed(base, shifted, share) if now > shift_at else base
        counts += _draw(rng, profile, per_look)
        look += 1
        rows = per_look * look
        latest = None
        if recent_looks and len(history) == recent_looks:
            latest = (_as_features(counts - history[0]), float(per_look * recent_looks))
        history.append(counts.copy())
        result = judge_drift_recent("max_input_psi", (_as_features(counts), rows), latest,
                                    (reference, reference_rows), setting.threshold,
                                    setting.alpha, look, setting.min_rows)  # fmt: skip
        if result.verdict is Verdict.FAIL:
            found.append(now)
            if first_only:
                return found
        if result.verdict is Verdict.FAIL or now - window_start >= setting.window:
            window_start, look, counts = now, 0, np.zeros((FEATURES, BINS))
            history.clear()
    return found


@dataclass(frozen=True)
class FalseAlarms:
    threshold: float
    days: float
    alarms: int
    bound_per_day: float

    @property
    def per_day(self) -> float:
        return self.alarms / self.days


@dataclass(frozen=True)
class Delay:
    shift_psi: float
    runs: int
    delays: list[float]  # seconds, of the runs that alarmed within two windows

    def summary(self) -> str:
        if not self.delays:
            return f"shift PSI {self.shift_psi}: found in 0 of {self.runs} runs within two windows"
        return (f"shift PSI {self.shift_psi}: found in {len(self.delays)} of {self.runs} runs "
                f"within two windows; delay median {np.median(self.delays):.0f} s, max "
                f"{max(self.delays):.0f} s")  # fmt: skip


def false_alarms(setting: Setting, days: float, seed: int) -> FalseAlarms:
    """Every alarm over ``days`` of unshifted traffic."""
    rng = np.random.default_rng(seed)
    count = len(alarms(setting, rng, days * DAY_SECONDS, 0.0, math.inf))
    return FalseAlarms(setting.threshold, days, count, setting.bound_per_day())


def detection_delays(setting: Setting, runs: int, seed: int,
                     shifts: tuple[float, ...] = SHIFTS) -> list[Delay]:  # fmt: skip
    """Per shift size, the delay from its start (anywhere in a window) to the first alarm."""
    rng = np.random.default_rng(seed)
    base, shifted = _profiles(np.random.default_rng(0))
    found = []
    for target in shifts:
        share = share_for_psi(base, shifted, target)
        delays = []
        for _ in range(runs):
            start = float(rng.uniform(0, setting.window))
            first = alarms(setting, rng, start + 2 * setting.window, share, start, True)
            delays += [first[0] - start] if first else []
        found.append(Delay(target, runs, delays))
    return found


Report = tuple[list[FalseAlarms], list[Delay]]


def report(setting: Setting, days: float, runs: int, seed: int,
           say: Callable[[str], None] = print) -> Report:  # fmt: skip
    """The post-promotion table: false alarms per day (at the threshold, and with the noise
    rule alone, threshold 0, which shows the alpha budget is kept), then detection delays."""
    say(f"post-promotion watch: {setting.rows_per_second:g} rows/s, a look every "
        f"{setting.interval:g} s, {setting.window:g} s windows; the input-drift check at alpha "
        f"{setting.alpha:.3g} a window (its share of the watch's: a bound of "
        f"{setting.bound_per_day():.2f} false alarms a day), {FEATURES} features x {BINS} "
        "bins")  # fmt: skip
    quiet = []
    for threshold in (setting.threshold, 0.0):
        each = false_alarms(replace(setting, threshold=threshold), days, seed)
        quiet.append(each)
        say(f"unshifted, threshold {threshold:g}: {each.alarms} alarms in {days:g} days, "
            f"{each.per_day:.2f} a day (bound {each.bound_per_day:.2f})")  # fmt: skip
    delays = detection_delays(setting, runs, seed)
    for delay in delays:
        say(delay.summary())
    return quiet, delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=float, default=2.0, help="unshifted days per threshold")
    parser.add_argument("--runs", type=int, default=20, help="runs per shift size")
    parser.add_argument("--false-alarms-per-day", type=float, default=None,
                        help="the watch's budget (default: alpha 0.05 a window)")  # fmt: skip
    args = parser.parse_args()
    watch = WatchPolicy(false_alarms_per_day=args.false_alarms_per_day, max_prediction_psi=None)
    report(Setting.of(watch, 0.95), args.days, args.runs, 42)


if __name__ == "__main__":
    main()
