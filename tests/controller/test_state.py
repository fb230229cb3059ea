"""The state file: a rollout survives a restart; commands are taken once, in order."""

from __future__ import annotations

from pathlib import Path

from controller.sources import Mark
from controller.state import Command, DecisionRecord, Phase, RolloutState, StateStore


def test_state_round_trips(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "rollout.db")
    assert store.load() is None
    mark = Mark(at=12.5, counters={"http://g": {("gateway_x_total", (("model", "m"),)): 3.0}})
    state = RolloutState(
        phase=Phase.PAUSED, steps=[5, 100], step_index=1, share=1.0, step_started_at=99.0,
        step_mark=mark.to_json(),
        history=[DecisionRecord(1.0, 0, 0.05, "advance", "every gate passes", [{"gate": "g"}])],
    )  # fmt: skip
    store.save(state)
    loaded = StateStore(tmp_path / "rollout.db").load()
    assert loaded == state
    assert loaded is not None and loaded.step_mark is not None
    assert Mark.from_json(loaded.step_mark) == mark


def test_commands_are_taken_once_in_order(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "rollout.db")
    other_process = StateStore(tmp_path / "rollout.db")
    other_process.send(Command.PAUSE)
    other_process.send(Command.ABORT)
    assert store.has_commands()
    assert store.take_commands() == [Command.PAUSE, Command.ABORT]
    assert store.take_commands() == []
    assert not store.has_commands()
