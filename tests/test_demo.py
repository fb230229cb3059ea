"""`make demo`'s own code path, with a faster policy: part 1's table, then the good student
promoted and the bad one rolled back, as the summary table says."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.local.demo import run_demo
from controller.rollout import EXIT_PROMOTED, EXIT_ROLLED_BACK
from tests.rollouts import write_policy

pytestmark = pytest.mark.e2e  # runs the demo: a gateway and two rollouts


def test_the_demo_promotes_the_good_student_and_rolls_back_the_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = run_demo(write_policy(tmp_path), requests_per_share=360)  # the split, once
    printed = capsys.readouterr().out
    assert [(o.student, o.exit_code) for o in outcomes] == [
        ("student.onnx", EXIT_PROMOTED), ("student_bad.onnx", EXIT_ROLLED_BACK)]  # fmt: skip
    assert [o.final_share for o in outcomes] == [1.0, 0.0]
    assert outcomes[0].last_line.startswith("rollout Promoted")
    assert (
        outcomes[1].last_line.startswith("rollout RolledBack")
        and "min_agreement" in outcomes[1].last_line
    )
    assert "Part 1: the split, at fixed student shares" in printed
    assert "the two rollouts" in printed  # the summary table


def test_the_demo_and_the_stack_find_their_shipped_policy() -> None:
    """`make demo` and `make stack` run the shipped demo policy, found from the installed code."""
    from controller.local import demo, stack
    from controller.policy import load_policy

    for path in (demo.DEMO_POLICY, stack.POLICY):
        assert load_policy(path).steps[-1] == 100
