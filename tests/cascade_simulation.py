"""How often the cascade's data-chosen threshold breaks its disagreement bound, by simulation.

Each run streams shadowed requests of a known law (confidence uniform on [0.1, 1]; the student's
answer differs from the teacher's with probability 0.6 (1 - c)^2, so the risk of threshold t is
R(t) = (2/9)(1 - t)^3 exactly) and lets ``gateway.thresholds`` choose at every look, as the
gateway does. A run is violated when any look chose a threshold whose true risk is above
max_disagreement. The same runs judged by the plug-in choice (the lowest threshold whose observed
rate is within the bound) show what the guarantee buys.

``make cascade-simulation`` runs the full count; ``tests/test_cascade_thresholds.py`` a reduced
one."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from gateway.thresholds import fixed_sequence, grid, look_delta


def true_risk(threshold: float) -> float:
    return 2.0 / 9.0 * (1.0 - threshold) ** 3


@dataclass(frozen=True)
class Outcome:
    runs: int
    violated: int  # runs where some look chose a threshold above the bound
    plug_in_violated: int
    final_thresholds: list[float]  # each run's last choice (1.0 when none)
    best: float  # the lowest grid threshold whose true risk is within the bound


def simulate(runs: int, max_disagreement: float = 0.002, confidence_level: float = 0.95,
             min_samples: int = 200, looks: int = 7, step: float = 0.01,
             seed: int = 0) -> Outcome:  # fmt: skip
    rng = np.random.default_rng(seed)
    thresholds = np.asarray(grid(step))
    risks = np.asarray([true_risk(t) for t in thresholds])
    delta = 1.0 - confidence_level
    n_max = min_samples * 2 ** (looks - 1)
    violated = plug_in = 0
    finals = []
    for _ in range(runs):
        confidence = rng.uniform(0.1, 1.0, n_max)
        wrong = rng.random(n_max) < 0.6 * (1.0 - confidence) ** 2
        cells = np.searchsorted(thresholds, confidence, side="right") - 1
        bad = bad_plug = False
        final = 1.0
        for look in range(looks):
            n = min_samples * 2**look
            counts = np.bincount(cells[:n][wrong[:n]], minlength=len(thresholds))
            wrong_at = np.cumsum(counts[::-1])[::-1].tolist()  # at or above each threshold
            index = fixed_sequence(wrong_at, n, max_disagreement, look_delta(look, delta))
            if index is not None:
                bad |= bool(risks[index] > max_disagreement)
                final = float(thresholds[index])
            within = np.flatnonzero(np.asarray(wrong_at) / n <= max_disagreement)
            if len(within):
                bad_plug |= bool(risks[within.min()] > max_disagreement)
        violated += bad
        plug_in += bad_plug
        finals.append(final)
    best = float(thresholds[np.flatnonzero(risks <= max_disagreement).min()])
    return Outcome(runs, violated, plug_in, finals, best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    outcome = simulate(args.runs, seed=args.seed)
    finals = np.asarray(outcome.final_thresholds)
    print(f"{outcome.runs} runs of 200 x 2^0..6 shadowed requests (12,800 at the last look), "
          "max_disagreement 0.002 at confidence 0.95")  # fmt: skip
    print(f"  Learn-then-Test (fixed sequence, Clopper-Pearson, delta spent over looks): "
          f"violated in {outcome.violated} runs ({outcome.violated / outcome.runs:.2%}; "
          "allowed 5%)")  # fmt: skip
    print(f"  plug-in (observed rate within the bound): violated in {outcome.plug_in_violated} "
          f"runs ({outcome.plug_in_violated / outcome.runs:.2%})")  # fmt: skip
    print(f"  last threshold chosen: median {np.median(finals):.2f} (best safe threshold "
          f"{outcome.best:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
