"""What an analysis means for a step (``judge``), table-driven; what it does to the rollout is
test_machine.py's."""

from __future__ import annotations

import pytest

from controller.analysis import GateResult, Verdict
from controller.decisions import Action, judge
from controller.policy import Gates, Policy

POLICY = Policy(
    bake_seconds=60, max_step_seconds=300, failure_limit=2, gates=Gates(min_agreement=0.9)
)
OK, BAD, UNSURE, SKIP = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE, Verdict.SKIPPED


def results(*verdicts: Verdict) -> list[GateResult]:
    return [
        GateResult(f"gate{n}", verdict, 0.5, 0.4, 0.6, 0.9, 100, "why")
        for n, verdict in enumerate(verdicts)
    ]


@pytest.mark.parametrize(
    ("verdicts", "elapsed", "failures", "last", "paused", "action", "new_failures"),
    [
        # every gate passes
        ((OK, OK), 10, 0, False, False, Action.HOLD, 0),  # still baking
        ((OK, OK), 60, 0, False, False, Action.ADVANCE, 0),
        ((OK, OK), 60, 0, True, False, Action.PROMOTE, 0),
        ((OK, OK), 60, 0, False, True, Action.HOLD, 0),  # paused: never advances
        ((OK, SKIP), 60, 0, False, False, Action.ADVANCE, 0),  # skipped gates do not block
        # a failure: counted, and rolled back at failure_limit in a row
        ((OK, BAD), 10, 0, False, False, Action.HOLD, 1),
        ((OK, BAD), 10, 1, False, False, Action.ROLLBACK, 2),
        ((BAD, BAD), 500, 1, True, True, Action.ROLLBACK, 2),  # even paused, even past the limit
        ((OK, UNSURE), 10, 1, False, False, Action.HOLD, 0),  # an inconclusive analysis resets it
        ((OK, OK), 60, 1, False, False, Action.ADVANCE, 0),
        # inconclusive: wait, until max_step_seconds
        ((UNSURE, OK), 100, 0, False, False, Action.HOLD, 0),
        ((UNSURE, OK), 301, 0, False, False, Action.ROLLBACK, 0),
        ((UNSURE, OK), 301, 0, False, True, Action.HOLD, 0),  # paused: no timeout
        (
            (UNSURE, BAD),
            301,
            0,
            False,
            False,
            Action.HOLD,
            1,
        ),  # a failure counts before the timeout
    ],
)
def test_judge(
    verdicts: tuple[Verdict, ...],
    elapsed: float,
    failures: int,
    last: bool,
    paused: bool,
    action: Action,
    new_failures: int,
) -> None:
    judgement = judge(results(*verdicts), elapsed, failures, POLICY, last, paused)
    assert judgement.action is action
    assert judgement.consecutive_failures == new_failures


def test_a_rollback_names_its_cause() -> None:
    failed = judge(results(OK, BAD), 10, 1, POLICY, False, False)
    assert failed.rollback_cause == "gate1" and "gate1 failed 2 analyses in a row" in failed.reason
    timed_out = judge(results(UNSURE), 301, 0, POLICY, False, False)
    assert timed_out.rollback_cause == "inconclusive_timeout"
    assert "max_step_seconds" in timed_out.reason


def test_a_step_gated_on_accuracy_waits_for_the_labels_of_its_bake() -> None:
    late_labels = Policy(bake_seconds=60, max_step_seconds=600, label_delay_seconds=120,
                         gates=Gates(max_accuracy_drop=0.02))  # fmt: skip
    waiting = judge(results(OK), 90, 0, late_labels, False, False)
    assert waiting.action is Action.HOLD and "waiting for the bake's labels" in waiting.reason
    assert judge(results(OK), 180, 0, late_labels, False, False).action is Action.ADVANCE
    # Without an accuracy gate, labels are not waited for.
    no_accuracy = late_labels.model_copy(update={"gates": Gates(min_agreement=0.9)})
    assert judge(results(OK), 60, 0, no_accuracy, False, False).action is Action.ADVANCE
