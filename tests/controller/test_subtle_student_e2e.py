"""A subtly worse student against the real controller and a real gateway (issue 29).

The bad student the other rollout tests roll back is wrong four times in five: any gate catches
it. This one is the shipped student with its class-4 logit raised, so the digits it already
half-took for a 4 become 4s: a few points less accurate than the shipped student, and still
agreeing with its teacher on over nine answers in ten. The tests' lenient ``FAST_POLICY``
(agreement 0.9, a 10-point drop) would pass it; gates as tight as ``production.yaml``'s must roll
it back, and the same gates must still promote the shipped student, or they prove nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from controller.rollout_store import Phase
from models import STUDENT_PATH
from models.data import Split
from tests.rollouts import (
    FAST_POLICY,
    gateway_config,
    roll_out,
    saved,
    share_of,
    write_policy,
)
from tests.servers import TestGateway

pytestmark = pytest.mark.e2e  # runs the CLI against a real gateway

StartGateway = Callable[..., TestGateway]
Logits = Callable[[np.ndarray], np.ndarray]

# On the test split: 4.7 points less accurate than the shipped student (5.6 below the teacher,
# against 0.8), agreeing with the teacher on 93.3 % of rows (against 98.9 %).
BIASED_CLASS, BIAS = 4, 10.0

# production.yaml's quality gates with FAST_POLICY's timing. min_agreement is production's;
# max_accuracy_drop is 0.03, not production's 0.01: the shipped student is itself 0.8 points
# below its teacher, which no interval can show is under 0.01 within seconds. Error rate and KL
# stay at FAST_POLICY's: production's 0.001 error rate needs about 4,000 error-free student
# requests a step to pass, and production's KL of 0.1 would also fail this student (KL 0.19),
# racing the two gates this test is about. Latency and cost gates would judge the machine.
GATES = {
    "min_agreement": 0.97,
    "max_accuracy_drop": 0.03,
    "max_error_rate": FAST_POLICY["gates"]["max_error_rate"],
    "max_kl": FAST_POLICY["gates"]["max_kl"],
}
# a step took 21-36 s on a quiet machine: room for a busy one, never a timeout's verdict
PRODUCTION_LIKE = {"gates": GATES, "max_step_seconds": 240}
QUALITY_GATES = ("min_agreement", "max_accuracy_drop")
# The decision line of a rollback on either, with the gate's value and threshold.
DECISION = re.compile(
    r" rollback: .*\[.*(min_agreement 0\.\d+ < 0\.97|max_accuracy_drop 0\.\d+ > 0\.03)"
)
# Every request compared with the teacher and paired for the accuracy drop (the other tests
# shadow a quarter): the shipped student's promotion past 0.97 took 36 s of rollout at a
# quarter and 21 s at all of them.
SHADOW_ALL = {"shadow": {"sample_rate": 1.0}}


def write_biased_student(path: Path, label: int = BIASED_CLASS, bias: float = BIAS) -> Path:
    """The shipped student with ``bias`` added to its logit for ``label``: one Add after the
    graph's last node, the signature unchanged."""
    model = onnx.load(STUDENT_PATH)
    graph = model.graph
    (output,) = graph.output
    last = next(node for node in graph.node if output.name in node.output)
    last.output[list(last.output).index(output.name)] = "unbiased_logits"
    offsets = np.zeros(output.type.tensor_type.shape.dim[1].dim_value, np.float32)
    offsets[label] = bias
    graph.initializer.append(numpy_helper.from_array(offsets, "class_bias"))
    graph.node.append(helper.make_node("Add", ["unbiased_logits", "class_bias"], [output.name]))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def logits_of(path: Path) -> Logits:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"pixels": x})[0]


def quality(student: Logits, teacher: Logits, split: Split) -> tuple[float, float]:
    """The student's accuracy drop from its teacher and its top-1 agreement with it."""
    student_answers, teacher_answers = student(split.x).argmax(1), teacher(split.x).argmax(1)
    drop = np.mean(teacher_answers == split.y) - np.mean(student_answers == split.y)
    return float(drop), float(np.mean(student_answers == teacher_answers))


@pytest.fixture(scope="module")
def subtle_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_biased_student(tmp_path_factory.mktemp("students") / "student_subtle.onnx")


def test_the_subtle_student_is_rolled_back_on_a_quality_gate_at_the_first_step(
    start_gateway: StartGateway,
    tmp_path: Path,
    subtle_student: Path,
    test_split: Split,
    teacher_direct: Logits,
    student_direct: Logits,
) -> None:
    # Given a student that is worse, but only subtly: what the lenient policy lets through.
    drop, agreement = quality(logits_of(subtle_student), teacher_direct, test_split)
    shipped_drop, _ = quality(student_direct, teacher_direct, test_split)
    assert 0.03 <= drop - shipped_drop <= 0.08, (drop, shipped_drop)
    assert 0.92 <= agreement <= 0.96, agreement
    fast = FAST_POLICY["gates"]
    assert drop < fast["max_accuracy_drop"] and agreement > fast["min_agreement"]
    gates = GATES
    assert drop > gates["max_accuracy_drop"] and agreement < gates["min_agreement"]

    # When the real controller runs production-like gates against it under labelled traffic,
    gateway = start_gateway({**gateway_config(subtle_student), **SHADOW_ALL})
    state = tmp_path / "rollout.db"
    result = roll_out(gateway, write_policy(tmp_path, **PRODUCTION_LIKE), state)

    # then it is rolled back at 5 %, on agreement or accuracy, not by the step's timeout.
    assert result.returncode == 3, result.stdout + result.stderr
    assert share_of(gateway) == 0.0
    rollout = saved(state)
    assert rollout.phase is Phase.ROLLED_BACK
    assert {r.step_index for r in rollout.history} == {0}  # never left the first step
    reason = rollout.rollback_reason or ""
    assert any(gate in reason for gate in QUALITY_GATES), reason
    assert "inconclusive" not in reason and "timed out" not in reason, reason
    failed = [g for g in rollout.last_analysis if g["verdict"] == "fail"]
    assert failed and {g["gate"] for g in failed} <= set(QUALITY_GATES), failed
    # The decision line names the failing gate, its value and the threshold it broke.
    assert any(DECISION.search(line) for line in result.stdout.splitlines()), result.stdout


def test_the_same_gates_promote_the_shipped_student(
    start_gateway: StartGateway, tmp_path: Path, test_split: Split,
    teacher_direct: Logits, student_direct: Logits,
) -> None:  # fmt: skip
    drop, agreement = quality(student_direct, teacher_direct, test_split)
    gates = GATES
    assert drop < gates["max_accuracy_drop"] and agreement > gates["min_agreement"]

    gateway = start_gateway({**gateway_config(), **SHADOW_ALL})
    state = tmp_path / "rollout.db"
    result = roll_out(gateway, write_policy(tmp_path, **PRODUCTION_LIKE), state)
    assert result.returncode == 0, result.stdout + result.stderr
    assert share_of(gateway) == 1.0
    rollout = saved(state)
    assert rollout.phase is Phase.PROMOTED
    assert [r.share for r in rollout.history if r.action == "set"] == [0.05, 0.25, 1.0]
