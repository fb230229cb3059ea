"""What a simulated rollout is up against: the student's true quality and the traffic it sees.

A scenario fixes the truth (accuracy drop, agreement, latency, errors) and the conditions
(traffic, share, labels, shadow rate, gaps); ``expected`` says which decision is right for it.
The set below is the one ``distill-canary simulate`` runs and the README reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from controller.policy import LIVE_ONLY_GATES

Expected = Literal["promote", "rollback"]
STALL_SHAPE = 1.5
"""A stall's Pareto shape: a finite mean, an infinite variance."""

# One z for the p99 of a lognormal: p99 = median * exp(Z99 * sigma).
Z99 = 2.3263478740408408

REALISTIC_RPS = 60.0
"""The fleet's traffic in the realistic scenarios: three gateways at 20 req/s each."""


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: Expected
    share: float = 0.05
    """The student's share of live traffic at the simulated step; 0 is a dark launch."""
    requests_per_second: float = REALISTIC_RPS
    """Requests over the whole fleet."""
    teacher_accuracy: float = 0.97
    accuracy_drop: float = 0.0
    """True teacher accuracy minus student accuracy (0.03 = 3 points)."""
    agreement: float = 0.99
    """True top-1 agreement with the teacher."""
    mean_kl: float = 0.02
    """True mean KL(teacher || student) per shadow comparison, in nats."""
    teacher_p99_ms: float = 8.0
    p99_ratio: float = 1.0
    """Student p99 over the teacher's (the same lognormal shape, scaled)."""
    latency_sigma: float = 0.6
    """Log-space spread of both latency distributions: p99/p50 = exp(2.33 sigma), 4x at 0.6."""
    error_rate: float = 0.0
    """Student requests that fail (and fall back to the teacher)."""
    label_fraction: float = 1.0
    """Requests that ever get a ground-truth label."""
    label_delay_seconds: float = 0.0
    """How long after its prediction a label arrives (whole analysis intervals in effect)."""
    shadow_rate: float = 0.5
    """Requests also sent to the other backend for comparison."""
    gap_intervals: int = 0
    """Analysis intervals without any request, starting with the second."""
    student_cost_per_1k: float = 0.0001
    teacher_stall_rate: float = 0.0
    """Teacher calls hit by a stall (a busy gateway: event-loop pauses, scheduling): a heavy-tailed
    extra time, Pareto with shape ``STALL_SHAPE`` from ``stall_ms``, on the teacher alone."""
    stall_ms: float = 10.0
    last_step: bool = False
    """The step at 100 %: the teacher serves no live request and its shadow calls are batched and
    timed apart, so its latency is only the rollout's earlier steps' (``earlier_teacher_calls``)."""

    @property
    def student_accuracy(self) -> float:
        return self.teacher_accuracy - self.accuracy_drop

    def paired_probabilities(self) -> tuple[float, float, float, float]:
        """P(both right), P(teacher alone right), P(student alone right), P(both wrong) on one
        example. Of the disagreements, 80 % have one of the two right (never fewer than the
        accuracy drop needs; never more than the teacher's errors allow the student)."""
        one_right = max(self.accuracy_drop, 0.8 * (1.0 - self.agreement))
        student_only = min((one_right - self.accuracy_drop) / 2.0, 1.0 - self.teacher_accuracy)
        teacher_only = student_only + self.accuracy_drop
        both = self.teacher_accuracy - teacher_only
        return (both, teacher_only, student_only, 1.0 - self.teacher_accuracy - student_only)

    def median_seconds(self, backend: str) -> float:
        """The median of a backend's lognormal latency, in seconds."""
        p99 = self.teacher_p99_ms * (self.p99_ratio if backend == "student" else 1.0)
        return p99 / 1000.0 / math.exp(Z99 * self.latency_sigma)


NOISY_TEACHER = {"teacher_stall_rate": 0.05, "stall_ms": 10.0}
"""One teacher call in 20 stalls 10 ms or more (Pareto 1.5): its p99 is about 29 ms against 8 ms
without, so a student 2x slower at every quantile (p99 16 ms) is faster than it at p99."""


def _good(name: str, drop: float = 0.0) -> Scenario:
    return Scenario(name, "promote", accuracy_drop=drop)


def _bad(name: str, **truth: float) -> Scenario:
    return replace(Scenario(name, "rollback"), **truth)  # type: ignore[arg-type]


def standard_scenarios(shares: tuple[float, ...] = (0.05, 0.25)) -> list[Scenario]:
    """Every scenario the issue names, at each share."""
    base = [
        _good("good"),
        _good("good, 0.5 points worse", 0.005),
        _good("good, 1 point worse", 0.01),
        _bad("2 points worse", accuracy_drop=0.02, agreement=0.98),
        _bad("3 points worse", accuracy_drop=0.03, agreement=0.97),
        _bad("5 points worse", accuracy_drop=0.05, agreement=0.95),
        _bad("10 points worse", accuracy_drop=0.10, agreement=0.90),
        _bad("agreement 0.90", agreement=0.90),
        _bad("agreement 0.80", agreement=0.80),
        _bad("p99 1.5x", p99_ratio=1.5),
        _bad("p99 2x", p99_ratio=2.0),
        _bad("p99 7x", p99_ratio=7.0),
        replace(_good("good, noisy teacher"), **NOISY_TEACHER),  # type: ignore[arg-type]
        _bad("p99 2x, noisy teacher", p99_ratio=2.0, **NOISY_TEACHER),
        _bad("p99 7x, noisy teacher", p99_ratio=7.0, **NOISY_TEACHER),
        _bad("1 % errors", error_rate=0.01),
        _bad("5 % errors", error_rate=0.05),
    ]
    conditions: list[tuple[str, dict[str, Any]]] = [
        ("slow traffic (6 req/s)", {"requests_per_second": 6.0}),
        ("fast traffic (600 req/s)", {"requests_per_second": 600.0}),
        ("labels 5 min late", {"label_delay_seconds": 300.0}),
        ("10 % labelled", {"label_fraction": 0.1}),
        ("traffic gap", {"gap_intervals": 2}),
    ]
    scenarios = []
    for share in shares:
        scenarios += [replace(s, share=share) for s in base]
        for student in (base[0], base[4]):  # the good one and the 3-points-worse one
            scenarios += [replace(student, name=f"{student.name}, {what}", share=share, **how)
                          for what, how in conditions]  # fmt: skip
    return scenarios


def last_step_scenarios() -> list[Scenario]:
    """The step at 100 %, where the latency ratio reads the teacher's earlier steps."""
    good = replace(_good("good, last step (100 %)"), share=1.0, last_step=True)
    return [good, replace(good, name="p99 2x, last step (100 %)", expected="rollback",
                          p99_ratio=2.0)]  # fmt: skip


DARK_LAUNCH = " (dark launch)"


def dark_launch_scenarios() -> list[Scenario]:
    """A leading step at share 0: the student serves no one and answers the shadow calls the
    gateways mirror to it (``shadow_rate`` of the teacher's traffic), so only the gates shadow
    traffic can answer decide (agreement, KL, latency); error rate, accuracy and cost are
    skipped. A student 3 points worse agrees with its teacher 97 % of the time, exactly
    production's ``min_agreement``: the dark launch sees its accuracy only through agreement."""
    base = [
        _good("good"),
        _bad("3 points worse", accuracy_drop=0.03, agreement=0.97),
        _bad("10 points worse", accuracy_drop=0.10, agreement=0.90),
        _bad("agreement 0.90", agreement=0.90),
        _bad("p99 2x", p99_ratio=2.0),
        _bad("p99 7x", p99_ratio=7.0),
        replace(_good("good, noisy teacher"), **NOISY_TEACHER),  # type: ignore[arg-type]
        _bad("p99 2x, noisy teacher", p99_ratio=2.0, **NOISY_TEACHER),
    ]
    return [replace(s, name=s.name + DARK_LAUNCH, share=0.0) for s in base]


def at_threshold_scenarios(
    gates: dict[str, float], shares: tuple[float, ...] = (0.05, 0.25)
) -> list[Scenario]:
    """For each statistical gate the policy sets, a student exactly at its threshold and good
    everywhere else: "rollback" is right (a gate passes only when the data show it holds), and
    the promoted rate is the gate's error at every look, to hold at 1 - confidence. The cost gate
    compares a measured value, not an estimate, and has none."""
    base = Scenario("", "rollback")
    truths: dict[str, dict[str, Any]] = {
        "max_error_rate": {"error_rate": gates.get("max_error_rate")},
        "max_accuracy_drop": {"accuracy_drop": gates.get("max_accuracy_drop"),
                              "agreement": 1.0 - gates.get("max_accuracy_drop", 0.0)},
        "min_agreement": {"agreement": gates.get("min_agreement")},
        "max_kl": {"mean_kl": gates.get("max_kl")},
        "max_latency_ratio": {"p99_ratio": gates.get("max_latency_ratio")},
        # The teacher as slow as the limit, so the ratio gate stays good.
        "max_latency_ms": {"teacher_p99_ms": gates.get("max_latency_ms")},
    }  # fmt: skip
    scenarios = []
    for gate, truth in truths.items():
        if truth[next(iter(truth))] is None:
            continue
        for share in shares:
            scenarios.append(replace(base, name=f"at threshold: {gate}", share=share, **truth))
    return scenarios


def simulated_scenarios(
    gates: dict[str, float], shares: tuple[float, ...] = (0.05, 0.25)
) -> list[Scenario]:
    """What ``distill-canary simulate`` runs: the standard set, a student at each gate's
    threshold, the last step, and a dark launch (when every gate it sets can be judged there
    or skipped: at least one must decide)."""
    dark = dark_launch_scenarios() if gates.keys() - LIVE_ONLY_GATES else []
    return [*standard_scenarios(shares), *at_threshold_scenarios(gates, shares),
            *last_step_scenarios(), *dark]  # fmt: skip
