"""How often the cascade's data-chosen threshold breaks its disagreement bound, by simulation.

Each run streams shadowed requests of a known law (confidence uniform on [0.1, 1]; the student's
answer differs from the teacher's with probability 0.6 (1 - c)^2, so the risk of threshold t is
R(t) = (2/9)(1 - t)^3 exactly) and lets ``gateway.thresholds`` choose at every look, as the
gateway does. A run is violated when any look chose a threshold whose true risk is above
max_disagreement. The same runs judged by the plug-in choice (the lowest threshold whose observed
rate is within the bound) show what the guarantee buys.

Dropped shadow calls (``--keep q``: each drawn request's shadow call answers with probability q):
the gateway drops sure and escalated requests alike (``path_independent``); before, an escalated
request (below the threshold in force) was evidence whatever became of the shadow lane, and only
sure ones were dropped (``escalated_always``), which over-represents escalated rows and makes
the observed risk of every threshold above the current one too low by about a factor q.

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


POLICIES = ("path_independent", "escalated_always")


def _evidence(rng: np.random.Generator, wanted: int, threshold: float, keep: float,
              policy: str) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``wanted`` evidence rows (confidence, wrong) from traffic whose threshold in force is
    ``threshold``: each request's shadow call answers with probability ``keep``."""
    confidence, wrong = [], []
    got = 0
    while got < wanted:
        c = rng.uniform(0.1, 1.0, 4 * wanted)
        w = rng.random(len(c)) < 0.6 * (1.0 - c) ** 2
        kept = rng.random(len(c)) < keep
        if policy == "escalated_always":
            kept |= c < threshold
        c, w = c[kept][: wanted - got], w[kept][: wanted - got]
        confidence.append(c)
        wrong.append(w)
        got += len(c)
    return np.concatenate(confidence), np.concatenate(wrong)


def simulate(runs: int, max_disagreement: float = 0.002, confidence_level: float = 0.95,
             min_samples: int = 200, looks: int = 7, step: float = 0.01,
             seed: int = 0, keep: float = 1.0,
             policy: str = "path_independent") -> Outcome:  # fmt: skip
    rng = np.random.default_rng(seed)
    thresholds = np.asarray(grid(step))
    risks = np.asarray([true_risk(t) for t in thresholds])
    delta = 1.0 - confidence_level
    violated = plug_in = 0
    finals = []
    for _ in range(runs):
        if keep <= 0.0 and policy == "path_independent":  # no evidence ever: 1.0 stands
            finals.append(1.0)
            continue
        confidence, wrong = np.empty(0), np.empty(0, dtype=bool)
        bad = bad_plug = False
        final = 1.0  # the threshold in force (1.0: everything escalates until a choice)
        for look in range(looks):
            n = min_samples * 2**look
            more = _evidence(rng, n - len(confidence), final, keep, policy)
            confidence = np.concatenate([confidence, more[0]])
            wrong = np.concatenate([wrong, more[1]])
            cells = np.searchsorted(thresholds, confidence, side="right") - 1
            counts = np.bincount(cells[wrong], minlength=len(thresholds))
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
    parser.add_argument("--keep", type=float, nargs="*", default=[1.0, 0.5, 0.2, 0.0],
                        help="chances that a drawn request's shadow call answers")  # fmt: skip
    args = parser.parse_args()
    for keep in args.keep:
        for policy in POLICIES[: 1 if keep >= 1.0 else 2]:
            report(simulate(args.runs, seed=args.seed, keep=keep, policy=policy), keep, policy)


def report(outcome: Outcome, keep: float, policy: str) -> None:
    finals = np.asarray(outcome.final_thresholds)
    print(f"shadow calls answered: q = {keep:g}; evidence: {policy}")
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
