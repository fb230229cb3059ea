"""Post-promotion scenarios for the watch's drift rule (``controller.drift``), run through the real
``judge_drift`` on simulated bin counts: false alarms per day on unshifted traffic, and the delay
from a shift's start to the first alarm for each shift size.

Traffic: ``rows_per_second`` summarised rows, a look every ``interval`` s, windows of
``window`` s; 16 features of 28 bins (a digits-like input in 16 blocks), each row's features
drawn independently from a fixed profile; the reference is one hour of that traffic. A shift
moves a share of every feature's mass to a shifted profile, sized by the PSI it gives.

    python -m controller.watch_simulation
"""

from __future__ import annotations

import argparse
from collections import deque
from dataclasses import dataclass

import numpy as np

from controller.analysis import Verdict
from controller.drift import FeatureKey, judge_drift_recent, psi

FEATURES, BINS = 16, 28


@dataclass(frozen=True)
class Setting:
    rows_per_second: float = 10.0
    interval: float = 30.0
    window: float = 3600.0
    threshold: float = 0.25
    recent: float = 300.0  # the watch's recent_seconds
    alpha: float = 0.05
    min_rows: int = 200


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


def run(setting: Setting, rng: np.random.Generator, seconds: float, share: float,
        shift_at: float) -> float | None:  # fmt: skip
    """Watches ``seconds`` of traffic whose shifted share is ``share`` from ``shift_at`` on;
    the time of the first alarm, or None."""
    base, shifted = _profiles(np.random.default_rng(0))
    reference_rows = int(setting.rows_per_second * 3600)
    reference = _as_features(_draw(rng, base, reference_rows))
    per_look = int(setting.rows_per_second * setting.interval)
    now, window_start, look = 0.0, 0.0, 0
    counts = np.zeros((FEATURES, BINS))
    recent_looks = round(setting.recent / setting.interval)
    history: deque[np.ndarray] = deque(maxlen=max(recent_looks, 1))
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
            return now
        if now - window_start >= setting.window:
            window_start, look, counts = now, 0, np.zeros((FEATURES, BINS))
            history.clear()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=float, default=2.0, help="unshifted days per setting")
    parser.add_argument("--runs", type=int, default=20, help="runs per shift size")
    args = parser.parse_args()
    rng = np.random.default_rng(42)
    for threshold in (0.25, 0.0):
        setting = Setting(threshold=threshold)
        alarms, day = 0, 86400.0
        for _ in range(int(args.days)):
            alarms += run(setting, rng, day, 0.0, day) is not None
        print(
            f"unshifted, threshold {threshold}: {alarms} of {int(args.days)} days with an alarm "
            f"(a look every {setting.interval:.0f} s at {setting.rows_per_second:.0f} rows/s)"
        )
    base, shifted = _profiles(np.random.default_rng(0))
    setting = Setting()
    for target in (0.15, 0.3, 0.5, 1.0):
        share = share_for_psi(base, shifted, target)
        delays = []
        for _ in range(args.runs):
            start = float(rng.uniform(0, setting.window))  # anywhere in a window
            found = run(setting, rng, start + 2 * setting.window, share, start)
            delays.append(np.inf if found is None else found - start)
        finite = [d for d in delays if np.isfinite(d)]
        median = f"{np.median(finite):.0f} s" if finite else "-"
        worst = f"{max(finite):.0f} s" if finite else "-"
        print(
            f"shift PSI {target}: detected in {len(finite)} of {len(delays)} runs within two "
            f"windows; delay median {median}, max {worst}"
        )


if __name__ == "__main__":
    main()
