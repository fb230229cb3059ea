"""`make demo`'s own code path, with a faster policy: one gateway serving both shipped pairs,
part 1's table for each, then at the same time the good digits student promoted and the bad text
student rolled back, each by its own controller, as the summary table says."""

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
    outcomes = run_demo(write_policy(tmp_path), requests_per_share=100)
    printed = capsys.readouterr().out
    assert [(o.scenario.split(":")[0], o.student, o.exit_code, o.final_share)
            for o in outcomes] == [("digits", "student.onnx", EXIT_PROMOTED, 1.0),
                                   ("text", "student_bad.onnx", EXIT_ROLLED_BACK, 0.0)]  # fmt: skip
    assert outcomes[0].last_line.startswith("rollout Promoted")
    assert (
        outcomes[1].last_line.startswith("rollout RolledBack")
        and "min_agreement" in outcomes[1].last_line
    )
    # at the same time: each controller started before the other ended
    ends = [o.started_at + o.seconds for o in outcomes]
    assert max(o.started_at for o in outcomes) < min(ends)
    assert "serving digits, text" in printed
    for model in ("digits", "text"):
        assert f"replaying the {model} test split" in printed
    assert printed.count("100 requests, 0 errors") == 8  # 4 shares of each pair
    # while both rolled out, no client of either model saw an error (labels included)
    assert all((o.requests or 0) > 0 and o.client_errors == 0 for o in outcomes), outcomes
    assert printed.count("while both rolled out: ") == 2
    assert "the two rollouts" in printed  # the summary table


def test_the_demo_and_the_stack_find_their_shipped_policy() -> None:
    """`make demo` and `make stack` run the shipped demo policy, found from the installed code."""
    from controller.local import demo, stack
    from controller.policy import load_policy

    for path in (demo.DEMO_POLICY, stack.POLICY):
        assert load_policy(path).steps[-1] == 100
