"""The CLI as an operator meets it: bad state files in one line, read-only commands that never
write, a status that stops counting when the rollout ended and shows what it should."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.rollout_store import DecisionRecord, Phase, Record, RolloutState, RolloutStore
from tests.controller.fakes import bad_state_files

runner = CliRunner()


@pytest.mark.parametrize("verb", [["status"], ["report"], ["pause"], ["abort", "--now"],
                                  ["retry"], ["promote"]])  # fmt: skip
def test_bad_state_files_get_one_line_and_stay_as_they_were(
    tmp_path: Path, verb: list[str]
) -> None:
    for name, path in bad_state_files(tmp_path).items():
        before = (path.exists(), path.is_file() and path.read_bytes(),
                  path.exists() and os.stat(path).st_mode)  # fmt: skip
        result = runner.invoke(app, [*verb, "--state", str(path)])
        assert result.exit_code == 1, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("distill-canary: "), (name, result.stderr)
        assert result.exception is None or isinstance(result.exception, SystemExit), name
        after = (path.exists(), path.is_file() and path.read_bytes(),
                 path.exists() and os.stat(path).st_mode)  # fmt: skip
        assert after == before, name


def test_run_refuses_a_state_file_that_is_not_one(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("gates: {max_kl: 1}\n")
    path = bad_state_files(tmp_path)["not sqlite"]
    result = runner.invoke(app, ["run", "--gateway", "http://127.0.0.1:9", "--model", "digits",
                                 "--policy", str(policy), "--state", str(path)])  # fmt: skip
    assert result.exit_code == 1
    assert "is not a distill-canary state file" in result.stderr


def finished_rollout(tmp_path: Path) -> Path:
    path = tmp_path / "rollout.db"
    store = RolloutStore.create(path)
    store.acquire("elsewhere:1:x", ttl=1, now=0.0, model="digits")
    history = [DecisionRecord(1000.0 + i, 0, 0.05, Record.HOLD, f"decision {i}") for i in range(5)]
    store.add(RolloutState(phase=Phase.ROLLED_BACK, steps=[5, 100], share=0.0,
                           started_at=1000.0, step_started_at=1000.0, ended_at=1042.0,
                           rollback_reason="min_agreement failed", history=history,
                           policy={"model": "digits", "interval_seconds": 1},
                           gateways=["http://127.0.0.1:9"]),
              "elsewhere:1:x")  # fmt: skip
    store.release("elsewhere:1:x")
    return path


def test_status_of_a_finished_rollout(tmp_path: Path) -> None:
    path = finished_rollout(tmp_path)
    first = runner.invoke(app, ["status", "--state", str(path)])
    assert first.exit_code == 0, first.output
    assert "time at this step: 42 s" in first.output  # frozen at the end, not counting on
    assert "next: none: ended RolledBack" in first.output
    assert "controller: none running" in first.output
    assert "http://127.0.0.1:9: intended 0% (generation ?), actual unknown" in first.output
    assert "decision 4" in first.output and "decision 0" in first.output
    none = runner.invoke(app, ["status", "--state", str(path), "--history", "0"])
    assert "decision" not in none.output
    two = runner.invoke(app, ["status", "--state", str(path), "--history", "2"])
    assert "decision 4" in two.output and "decision 2" not in two.output
    watch = runner.invoke(app, ["status", "--state", str(path), "--watch"])
    assert watch.exit_code == 0  # a finished rollout: shown once, then done
    missing = runner.invoke(app, ["status", "--state", str(path), "--rollout", "7"])
    assert (
        missing.exit_code == 1 and "no rollout 7" in missing.stderr and "are: 1" in missing.stderr
    )


def test_commands_on_a_finished_rollout_are_refused(tmp_path: Path) -> None:
    path = finished_rollout(tmp_path)
    for verb in (["pause"], ["resume"], ["promote"], ["abort"], ["abort", "--now"]):
        result = runner.invoke(app, [*verb, "--state", str(path)])
        assert result.exit_code == 1 and "RolledBack" in result.stderr, verb
