"""Manual approval and the gates a move waits for: the pure decision from a table, and
``approve`` reaching a live controller the way pause and resume do (through the state file)."""

from __future__ import annotations

import os
import pwd
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.approval import decide, entry_gates
from controller.cli import app
from controller.machine import SKIP_GATES, OperatorCommand, Position, transition
from controller.operator import operator_name, send_and_wait
from controller.rollout import Launch
from controller.rollout_store import Command, Phase, Record, RolloutStore
from controller.webhooks import Answer, GateAnswer, GateType, Webhook
from tests.controller.fakes import Clock, FakeFleet, make_controller
from tests.controller.receivers import http_receiver

GATEWAYS = ["http://gw-1"]
HOLDER = "test-host-a:1:aaaa"
STEPS = [0.0, 5.0, 25.0, 100.0]
CR, PR, TI, CP = (GateType.CONFIRM_ROLLOUT, GateType.PRE_ROLLOUT,
                  GateType.CONFIRM_TRAFFIC_INCREASE, GateType.CONFIRM_PROMOTION)  # fmt: skip


@pytest.mark.parametrize(
    ("to_index", "starting", "share_before", "gates"),
    [
        (0, True, 0.0, [CR, PR]),  # a dark launch (share 0) raises no traffic
        (1, False, 0.0, [TI]),
        (2, False, 0.05, [TI]),
        (3, False, 0.25, [TI, CP]),  # the last step: the student takes everything
        (1, True, 0.0, [CR, PR, TI]),  # started --from-current at step 2
    ],
)
def test_the_gates_before_each_step(
    to_index: int, starting: bool, share_before: float, gates: list[GateType]
) -> None:
    assert entry_gates(to_index, STEPS, starting, share_before) == gates


def answer(kind: GateType, what: Answer, detail: str = "answered 403") -> GateAnswer:
    hook = Webhook(name=f"{kind}-hook", type=kind, url="http://gate")
    return GateAnswer(hook, what, "200" if what is Answer.OPEN else detail)


def test_a_move_opens_only_when_every_gate_and_approval_lets_it() -> None:
    manual = ["confirm-promotion"]
    waiting = decide([TI, CP], manual, [], [answer(CP, Answer.OPEN)])
    assert not waiting.open and waiting.manual == ("confirm-promotion",)
    assert waiting.reason == ("waiting for confirm-promotion: manual approval (distill-canary "
                              "approve --gate confirm-promotion)")  # fmt: skip
    assert decide([TI, CP], manual, ["confirm-promotion"], [answer(CP, Answer.OPEN)]).open
    closed = decide([TI, CP], manual, ["confirm-promotion"], [answer(CP, Answer.CLOSED)])
    assert closed.waits == ("confirm-promotion: webhook confirm-promotion-hook answered 403",)
    gone = decide([TI], [], [], [answer(TI, Answer.UNREACHABLE, "unreachable (ConnectError)")])
    assert not gone.open and gone.unreachable == ("confirm-traffic-increase-hook",)
    refused = decide([CR, PR], [], [], [answer(PR, Answer.CLOSED, "answered 500")])
    assert refused.abort == "pre-rollout gate pre-rollout-hook answered 500"
    unanswered = decide([CR, PR], [], [], [answer(PR, Answer.UNREACHABLE, "unreachable (x)")])
    assert unanswered.abort is None and not unanswered.open  # no answer never aborts: it holds
    assert decide([CR, PR], ["confirm-promotion"], [], []).open  # not this move's gate


def test_approve_releases_a_manual_gate_and_the_history_says_who(tmp_path: Path) -> None:
    store, fleet, clock = RolloutStore.create(tmp_path / "r.db"), FakeFleet(GATEWAYS), Clock()
    with http_receiver() as receiver:
        controller, _, _ = make_controller(
            store, fleet, clock, HOLDER, manual_approval=["confirm-promotion"],
            notify=[{"url": f"{receiver.url}/ops", "events": ["waiting_for_approval",
                                                              "approved", "promoted"]}],
        )  # fmt: skip
        controller.start(Launch(GATEWAYS))
        for _ in range(60):  # two 10 s bakes, then it waits
            controller.tick()
            clock.sleep(1)
        held = controller.state.share, controller.state.phase
        assert (controller.state.waiting or {})["manual"] == ["confirm-promotion"]

        def controller_ticks(seconds: float) -> None:  # the operator waits; the controller ticks
            clock.sleep(seconds)
            controller.tick()

        def approve(gate: GateType) -> tuple[bool, str]:
            outcome = send_and_wait(store, controller.state, Command.APPROVE, clock,
                                    controller_ticks, argument=gate.value)  # fmt: skip
            return outcome.acted, outcome.note

        acted, note = approve(GateType.CONFIRM_TRAFFIC_INCREASE)
        assert not acted and note == ("approve confirm-traffic-increase ignored: the rollout "
                                      "waits for confirm-promotion")  # fmt: skip
        acted, note = approve(GateType.CONFIRM_PROMOTION)
        assert acted and note.startswith("confirm-promotion approved by an operator (")
        for _ in range(30):
            if controller.state.phase.terminal:
                break
            controller.tick()
            clock.sleep(1)
        controller.notifications.close(2.0)
        sent = [r.json() for r in receiver.on("/ops")]
    assert held == (0.25, Phase.PROGRESSING)
    assert controller.state.phase is Phase.PROMOTED
    approved = [r for r in controller.state.history if r.action is Record.APPROVED]
    assert len(approved) == 1 and "@" in approved[0].reason  # user@host, as for pause
    assert [e["type"] for e in sent] == ["waiting_for_approval", "approved", "promoted"]
    assert "confirm-promotion: manual approval" in sent[0]["reason"]
    saved = store.load()
    assert saved is not None and saved.approved == [] and saved.waiting is None


def test_approve_needs_a_gate_a_rollout_waits_at_and_a_live_controller(tmp_path: Path) -> None:
    store, fleet, clock = RolloutStore.create(tmp_path / "r.db"), FakeFleet(GATEWAYS), Clock()
    controller, _, _ = make_controller(store, fleet, clock, HOLDER)
    controller.start(Launch(GATEWAYS))
    store.release(HOLDER)  # the controller is gone
    runner = CliRunner()
    wrong = runner.invoke(app, ["approve", "--gate", "rollout", "--state", str(tmp_path / "r.db")])
    assert wrong.exit_code == 2 and "rollout is not a gate a rollout waits at" in wrong.stderr
    alone = runner.invoke(app, ["approve", "--gate", "confirm-promotion",
                                "--state", str(tmp_path / "r.db")])  # fmt: skip
    assert alone.exit_code == 1
    assert "approve not sent: no controller is running this rollout" in alone.stderr


def test_promote_never_passes_a_waiting_gate_unless_told_to_and_then_says_so(
    tmp_path: Path,
) -> None:
    """A change board (confirm-traffic-increase, answering 403) and a manual confirm-promotion:
    promote and promote --full are refused while a gate guards the move; --skip-gates moves,
    names the gates it passed in the history and the event, and leaves no stale wait."""
    store, fleet, clock = RolloutStore.create(tmp_path / "r.db"), FakeFleet(GATEWAYS), Clock()
    with http_receiver() as receiver:
        board = {"name": "change-board", "type": "confirm-traffic-increase",
                 "url": f"{receiver.url}/board", "timeout_seconds": 2.0}  # fmt: skip
        controller, _, _ = make_controller(
            store, fleet, clock, HOLDER, manual_approval=["confirm-promotion"], webhooks=[board],
            notify=[{"url": f"{receiver.url}/ops", "events": ["step_advanced", "promoted"]}],
        )  # fmt: skip
        controller.start(Launch(GATEWAYS))
        controller.tick()  # the board lets 5 % start
        receiver.status["/board"] = 403
        for _ in range(15):  # a 10 s bake, then the board holds the move to 25 %
            controller.tick()
            clock.sleep(1)
        assert (controller.state.waiting or {})["step_index"] == 1

        def controller_ticks(seconds: float) -> None:
            clock.sleep(seconds)
            controller.tick()

        def send(command: Command, argument: str = "") -> tuple[bool, str]:
            outcome = send_and_wait(store, controller.state, command, clock, controller_ticks,
                                    argument=argument)  # fmt: skip
            return outcome.acted, outcome.note

        acted, note = send(Command.PROMOTE)
        assert not acted and note == (
            "promote refused: it would pass confirm-traffic-increase (webhook change-board); "
            "approve or wait for them, or send promote --skip-gates"
        )
        acted, note = send(Command.PROMOTE, SKIP_GATES)
        assert acted and controller.state.share == 0.25
        assert controller.state.waiting is None and controller.state.approved == []
        acted, note = send(Command.PROMOTE_FULL)
        assert (
            not acted
            and "it would pass confirm-traffic-increase (webhook change-board), "
            "confirm-promotion (manual approval)"
            in note
        )
        acted, note = send(Command.PROMOTE_FULL, SKIP_GATES)
        assert acted
        for _ in range(5):
            if controller.state.phase.terminal:
                break
            controller.tick()
            clock.sleep(1)
        controller.notifications.close(2.0)
        sent = [r.json() for r in receiver.on("/ops")]
    assert controller.state.phase is Phase.PROMOTED
    skipped = [r.reason for r in controller.state.history if "skipping gates" in r.reason]
    assert len(skipped) == 2
    assert skipped[1].startswith("fully promoted by an operator (")
    assert skipped[1].endswith(", skipping gates: confirm-traffic-increase (webhook change-board), "
                               "confirm-promotion (manual approval) (--skip-gates)")  # fmt: skip
    advanced = [e["reason"] for e in sent if e["type"] == "step_advanced"]
    assert [reason for reason in advanced if "skipping gates" in reason] == skipped
    saved = store.load()
    assert saved is not None and saved.waiting is None and saved.approved == []


def test_a_command_this_controller_does_not_know_is_closed_not_a_crash(tmp_path: Path) -> None:
    """A newer CLI's command during an upgrade: the controller closes it as ignored (its sender
    hears at once) and goes on taking the commands after it."""
    store, fleet, clock = RolloutStore.create(tmp_path / "r.db"), FakeFleet(GATEWAYS), Clock()
    controller, _, _ = make_controller(store, fleet, clock, HOLDER)
    controller.start(Launch(GATEWAYS))
    with sqlite3.connect(tmp_path / "r.db") as db:
        newer = db.execute(
            "insert into commands (rollout_id, command, sender, created_at, expires_at) "
            "values (1, 'rewind:2', 'ops@host', ?, ?)", (clock(), clock() + 60),
        ).lastrowid  # fmt: skip
    assert newer is not None
    pause = store.send(1, Command.PAUSE, "ops@host", 60.0, clock())
    controller.tick()
    ignored = store.outcome(newer)
    assert ignored.taken and not ignored.acted
    assert ignored.note == "ignored: this controller does not know 'rewind:2'"
    assert store.outcome(pause).acted and controller.state.phase is Phase.PAUSED


def test_who_sent_a_command_is_the_callers_uid_not_what_USER_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.setenv("LOGNAME", "someone-else")
    assert operator_name().split("@")[0] == pwd.getpwuid(os.getuid()).pw_name != "someone-else"


def test_promote_full_before_the_start_names_the_start_gates_too() -> None:
    """Not started yet (a confirm-rollout webhook holds the first step): promote --full would
    pass it as well as every later gate."""
    unstarted = Position(Phase.PROGRESSING, 0, 2, confirmed=False, steps=(5.0, 25.0, 100.0),
                         guards=(("confirm-rollout", "webhook board"),
                                 ("confirm-promotion", "manual approval")),
                         started=False)  # fmt: skip
    refused = transition(unstarted, OperatorCommand(Command.PROMOTE_FULL, "ops@host"))
    assert not refused.acted and refused.note.startswith(
        "promote --full refused: it would pass confirm-rollout (webhook board), "
        "confirm-promotion (manual approval);"
    )
    released = replace(unstarted, approved=("confirm-promotion",), guards=unstarted.guards[1:])
    moved = transition(released, OperatorCommand(Command.PROMOTE_FULL, "ops@host"))
    assert moved.acted and "skipping" not in moved.note  # an approval given is not bypassed
