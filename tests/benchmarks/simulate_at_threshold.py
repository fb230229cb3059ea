"""The students at each gate's threshold, on their own, at 500 rollouts each by default (the
controller judge only): the error ``confidence`` bounds, measured to about one point of Monte
Carlo error (0.7 point at ``--runs 1000``, the committed run's). ``python -m
tests.benchmarks.simulate_at_threshold`` writes
``tests/benchmarks/results/simulation.at_threshold.json`` (docs/simulation.md's second
at-threshold table)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from controller.cli import PRODUCTION_POLICY
from controller.policy import load_policy
from controller.simulation.report import write_json
from controller.simulation.runner import run_scenarios
from controller.simulation.scenarios import at_threshold_scenarios

OUT = Path(__file__).parent / "results" / "simulation.at_threshold.json"
RUNS = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=RUNS, help="rollouts per scenario")
    parser.add_argument("--workers", type=int, default=2, help="processes")
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    policy = load_policy(PRODUCTION_POLICY)
    started = time.perf_counter()
    summaries = run_scenarios(at_threshold_scenarios(policy.gates.configured()), policy,
                              args.runs, seed=args.seed, judges=("controller",),
                              workers=args.workers)  # fmt: skip
    write_json(summaries, args.out)
    for s in summaries:
        print(f"{s.scenario:40s} {s.share:.0%}  promoted {s.promoted_rate:.1%} of {s.runs}")
    print(
        f"{len(summaries) * args.runs} rollouts in {time.perf_counter() - started:.0f} s; "
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
