"""The rollout policy: a YAML file validated by pydantic. Errors name the key."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from controller.notify.receiver import Receiver
from controller.rollout_store import DEFAULT_MODEL
from controller.watch_policy import WatchPolicy
from controller.webhooks import WAITING_GATES, GateType, Webhook, longest_tick
from gateway.validation import StrictModel, describe_errors, read_yaml_mapping

# Gates that need live student traffic, so a dark-launch step (share 0) cannot judge them.
LIVE_ONLY_GATES = frozenset(
    {"max_error_rate", "max_accuracy_drop", "max_class_accuracy_drop", "max_cost_per_1k",
     "max_hamming_accuracy_drop"}
)  # fmt: skip


class PolicyError(Exception):
    """The policy file is invalid; the message names the offending key."""


RENAMED_GATES = {"max_p99_ms": "max_latency_ms", "max_p99_ratio": "max_latency_ratio"}


class Gates(StrictModel):
    """Each gate is optional; a missing gate is not checked. At least one must be set."""

    max_latency_ms: float | None = Field(default=None, gt=0)
    """Student backend latency at the policy's ``latency_quantile``, in milliseconds."""
    max_latency_ratio: float | None = Field(default=None, gt=0)
    """Student over teacher backend latency (live and shadow calls), at the median and at
    ``latency_quantile``: both ratios must hold (the median decides a slower student whatever
    stalls do to the tails)."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """The latency gates read ``latency_quantile``, not always the p99: say so, once."""
        for old, new in RENAMED_GATES.items():
            if isinstance(data, dict) and old in data:
                raise ValueError(f"{old} is now {new} (it reads the policy's latency_quantile)")
        return data

    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    """Student 5xx answers (and fallbacks to the teacher) over student requests; a client's 4xx
    is not the student's failure."""
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    """Top-1 agreement with the teacher on shadow traffic."""
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)
    """Teacher accuracy minus student accuracy from feedback, as a fraction (0.02 = 2 points)."""
    max_class_accuracy_drop: float | None = Field(default=None, ge=0, le=1)
    """The same for every true class on its own (a student can match the teacher overall and
    fail a minority class), Bonferroni-corrected over the classes."""
    max_kl: float | None = Field(default=None, ge=0)
    """Mean KL(teacher || student) on shadow traffic, in nats."""
    max_cost_per_1k: float | None = Field(default=None, ge=0)
    """Student dollars per 1,000 requests."""
    max_mean_abs_error: float | None = Field(default=None, ge=0)
    """Regression: mean |student - teacher| on shadow traffic, in the output's units; with labels,
    also the student's mean absolute error against them less the teacher's."""
    max_relative_error: float | None = Field(default=None, ge=0)
    """Regression: the same relative to the reference's magnitude (0.05 = 5 %)."""
    min_cosine: float | None = Field(default=None, ge=-1, le=1)
    """Embedding: mean cosine similarity of student and teacher vectors on shadow traffic."""
    min_hamming_agreement: float | None = Field(default=None, ge=0, le=1)
    """Multilabel: the mean share of labels on which student and teacher agree (shadow)."""
    max_hamming_accuracy_drop: float | None = Field(default=None, ge=0, le=1)
    """Multilabel: the teacher's Hamming accuracy on labels (the mean share of an example's
    labels it gets right) less the student's."""

    def configured(self) -> dict[str, float]:
        return {name: value for name, value in self.model_dump().items() if value is not None}


TASK_GATES: dict[str, frozenset[str]] = {
    "classification": frozenset({"min_agreement", "max_accuracy_drop", "max_class_accuracy_drop",
                                 "max_kl"}),
    # agreement: of the whole label set; the class gate: label by label; accuracy over all labels
    # together is not judged (a row's labels are not independent trials)
    "multilabel": frozenset({"min_agreement", "max_class_accuracy_drop", "min_hamming_agreement",
                             "max_hamming_accuracy_drop"}),
    "regression": frozenset({"max_mean_abs_error", "max_relative_error"}),
    "embedding": frozenset({"min_cosine"}),
}  # fmt: skip
"""The gates that fit each task (``task:`` in the gateway's config); the latency, error-rate and
cost gates fit every task."""


TICK_ROOM_SECONDS = 5.0
"""What a tick keeps of its lease for its other work (the metrics query, saving the state)."""


class Policy(StrictModel):
    model: str = DEFAULT_MODEL
    """The logical model on the gateways."""
    task: Literal["classification", "multilabel", "regression", "embedding"] = "classification"
    """The model's task, as the gateways' ``task:`` says: which comparison gates fit it."""
    steps: list[float] = Field(default_factory=lambda: [5.0, 25.0, 100.0])
    """Student shares in percent; rising, ending at 100. A leading 0 is a dark-launch step."""
    bake_seconds: float = Field(default=60.0, ge=0)
    """The least time at each step before it can pass."""
    interval_seconds: float = Field(default=10.0, gt=0)
    """How often to analyse."""
    min_requests: int = Field(default=100, ge=1)
    """The least student requests at a step (shadow comparisons at a dark-launch step) before a
    verdict."""
    failure_limit: int = Field(default=2, ge=1)
    """Consecutive failed analyses that roll back."""
    max_step_seconds: float = Field(default=600.0, gt=0)
    """How long a step may stay inconclusive before the rollout rolls back."""
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    """Two-sided confidence of every interval behind a verdict."""
    label_delay_seconds: float = Field(default=0.0, ge=0)
    """How long ground-truth labels take to arrive after their prediction (a high percentile, not
    the mean). With ``max_accuracy_drop`` set, a step passes only after ``bake_seconds`` plus this,
    so the labels of the traffic it baked on have arrived: a step never passes on accuracy it has
    not seen."""
    latency_quantile: float = Field(default=0.99, gt=0.5, lt=1.0)
    """The quantile the latency gates read (p99 by default)."""
    notify: list[Receiver] = Field(default_factory=list)
    """Receivers of the rollout's events (README: "Rollout events and human gates")."""
    webhooks: list[Webhook] = Field(default_factory=list)
    """Webhook gates of Flagger's types: confirm-rollout, pre-rollout, confirm-traffic-increase,
    confirm-promotion, rollout, post-rollout, rollback."""
    manual_approval: list[GateType] = Field(default_factory=list)
    """Gates that also wait for an operator's ``distill-canary approve --gate <gate>``:
    confirm-rollout, confirm-traffic-increase or confirm-promotion."""
    on_drift: Literal["reassert", "pause"] = "reassert"
    """What to do when a gateway reports a share (or generation) the controller did not set:
    ``reassert`` sets the intended share again and restarts the step's analysis; ``pause`` pauses
    the rollout without touching the share. Either way, traffic at another share is never
    analysed as if it were the intended one."""
    gates: Gates = Field(default_factory=Gates)
    dry_run: list[str] = Field(default_factory=list)
    """Gates (configured under ``gates``) that are measured, shown, exported and reported like the
    others but never decide: a new gate watched for a few rollouts before it is trusted (Argo
    Rollouts' ``dryRun``). At least one gate must still decide."""

    watch: WatchPolicy | None = None
    """After promotion, keep judging the student (``controller.watch``): drift of its inputs and
    predictions against a reference, label-free accuracy, the gates in ``watch.gates``; absent:
    the controller's work ends at promotion."""

    @field_validator("steps")
    @classmethod
    def _steps_rise_to_100(cls, steps: list[float]) -> list[float]:
        if not steps:
            raise ValueError("needs at least one step")
        if any(not 0 <= step <= 100 for step in steps):
            raise ValueError("each step is a percentage, 0..100")
        if any(later <= earlier for earlier, later in itertools.pairwise(steps)):
            raise ValueError("steps must rise strictly")
        if steps[-1] != 100:
            raise ValueError("the last step must be 100")
        return steps

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if self.max_step_seconds < self.bake_seconds:
            raise ValueError("max_step_seconds must be at least bake_seconds")
        configured = self.gates.configured()
        if not configured:
            raise ValueError("gates: set at least one gate")
        misfits = sorted(configured.keys() & (set().union(*TASK_GATES.values())
                                              - TASK_GATES[self.task]))  # fmt: skip
        if misfits:
            raise ValueError(f"gates: {', '.join(misfits)} do not fit task {self.task} (its "
                             f"gates: {', '.join(sorted(TASK_GATES[self.task]))})")  # fmt: skip
        unknown = [gate for gate in self.dry_run if gate not in configured]
        if unknown:
            raise ValueError(f"dry_run: {', '.join(unknown)} is not a configured gate")
        if not configured.keys() - set(self.dry_run):
            raise ValueError("dry_run: at least one gate must decide")
        if self.steps[0] == 0 and not configured.keys() - LIVE_ONLY_GATES:
            raise ValueError(
                "gates: a dark-launch step (0) needs a gate it can judge from shadow traffic: "
                "max_latency_ms, max_latency_ratio, or one of the task's (classification: "
                "min_agreement, max_kl; multilabel: min_agreement, min_hamming_agreement; "
                "regression: max_mean_abs_error, max_relative_error; embedding: min_cosine)"
            )
        return self

    @model_validator(mode="after")
    def _receivers_and_gates(self) -> Policy:
        manual = [gate.value for gate in self.manual_approval if gate not in WAITING_GATES]
        if manual:
            raise ValueError(f"manual_approval: {', '.join(manual)} is not a gate a rollout "
                             f"waits at ({', '.join(WAITING_GATES)})")  # fmt: skip
        for what, names in (("notify", [r.name for r in self.notify]),
                            ("webhooks", [h.name for h in self.webhooks])):  # fmt: skip
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise ValueError(f"{what}: names must differ ({', '.join(twice)} repeats)")
        # A tick blocked in webhook calls past the lease lets a standby take the rollout over
        # while this controller still acts, and drops operator commands (abort) that expire.
        seconds, tick = longest_tick(self.webhooks)
        room = self.lease_seconds - TICK_ROOM_SECONDS
        if seconds > room:
            raise ValueError(f"webhooks: {tick} = {seconds:g} s of calls in one tick, more than "
                             f"the lease ({self.lease_seconds:g} s: 3 intervals, at least 15 s) "
                             f"less {TICK_ROOM_SECONDS:g} s for the rest of the tick: lower their "
                             "timeout_seconds or raise interval_seconds")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _watch_checks(self) -> Policy:
        watch = self.watch
        if watch is None:
            return self
        try:
            gates = Gates.model_validate(watch.gates).configured()
        except ValidationError as exc:
            raise ValueError(f"watch.gates: {describe_errors(exc, limit=3)}") from None
        misfits = sorted(gates.keys() & (set().union(*TASK_GATES.values()) - TASK_GATES[self.task]))
        if misfits:
            raise ValueError(f"watch.gates: {', '.join(misfits)} do not fit task {self.task}")
        if watch.max_estimated_accuracy_drop is not None and self.task != "classification":
            raise ValueError("watch.max_estimated_accuracy_drop: classification only (it reads "
                             "the student's top-1 confidence)")  # fmt: skip
        checks = (watch.max_input_psi, watch.max_prediction_psi, watch.max_estimated_accuracy_drop)
        if not gates and all(check is None for check in checks):
            raise ValueError("watch: set at least one check")
        return self

    @property
    def lease_seconds(self) -> float:
        """How long a controller's lease lasts without a heartbeat: long enough for a slow tick
        (gateways and Prometheus each get seconds to answer), short enough to hand over soon."""
        return max(15.0, 3 * self.interval_seconds)

    @property
    def pass_after_seconds(self) -> float:
        """The least time a step runs before it can pass: its bake, and when accuracy is gated,
        the time for the bake's labels to arrive."""
        gates = self.gates
        waits_for_labels = (
            gates.max_accuracy_drop,
            gates.max_class_accuracy_drop,
            gates.max_hamming_accuracy_drop,
        ) != (None, None, None)
        return self.bake_seconds + (self.label_delay_seconds if waits_for_labels else 0.0)

    def share(self, step_index: int) -> float:
        return self.steps[step_index] / 100.0

    def is_dark_launch(self, step_index: int) -> bool:
        return self.steps[step_index] == 0


def load_policy(path: Path) -> Policy:
    data = read_yaml_mapping(path, "policy", PolicyError)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{path}: invalid policy: {describe_errors(exc, limit=10)}") from exc
