"""Rollout events reach real HTTP receivers on loopback: once each, in order, signed; in Slack's
and CloudEvents' formats; and a receiver that is down or silent never holds a tick."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from controller.analysis import BackendWindow, WindowMetrics
from controller.events import EventType, RolloutEvent, Severity, watch_alert
from controller.exporter import ControllerMetrics
from controller.notify import Notifications, NotifyError, Receiver
from controller.notify.delivery import SIGNATURE_HEADER
from controller.rollout import (
    EXIT_PROMOTED,
    EXIT_REFUSED,
    EXIT_ROLLED_BACK,
    CanaryController,
    Launch,
)
from controller.rollout_store import Command, RolloutState, RolloutStore
from tests.controller.fakes import Clock, FakeFleet, make_controller
from tests.controller.receivers import (
    closed_port,
    http_receiver,
    signed_by,
    silent_receiver,
    trickling_receiver,
)

pytestmark = pytest.mark.e2e  # real HTTP receivers on loopback, real timeouts

GATEWAYS = ["http://gw-1", "http://gw-2"]
HOLDER = "test-host-a:1:aaaa"
SECRET = "s3cret-key-for-the-receiver"
SCHEMA = json.loads((Path(__file__).parent / "data" / "cloudevents.json").read_text())
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def failing_window() -> WindowMetrics:
    """The student disagrees with the teacher on half the shadow traffic."""
    return WindowMetrics(teacher=BackendWindow(requests=1000), student=BackendWindow(requests=1000),
                         comparisons=1000, agreements=500)  # fmt: skip


def controller_for(
    tmp_path: Path, receivers: list[dict[str, Any]], **policy: object
) -> tuple[CanaryController, Any, CollectorRegistry]:
    store = RolloutStore.create(tmp_path / "rollout.db")
    settings = {"bake_seconds": 3, **policy}  # 3 s bakes at 1 s intervals: a few ticks a step
    return make_controller(store, FakeFleet(GATEWAYS), Clock(), HOLDER, notify=receivers,
                           **settings)  # fmt: skip


def verified(header: str, body: bytes, now: float) -> bool:
    return signed_by(SECRET, header, body, now)


def types(requests: list[Any]) -> list[str]:
    return [r.json()["type"] for r in requests]


def test_each_event_of_a_promoted_rollout_arrives_once_in_order_and_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_KEY", SECRET)
    with http_receiver() as receiver:
        hooks = [{"url": f"{receiver.url}/all", "secret_env": "HOOK_KEY"}]
        controller, _, registry = controller_for(tmp_path, hooks)
        assert controller.run(Launch(GATEWAYS)) == EXIT_PROMOTED
        got = receiver.on("/all")  # run() flushed the queue before it returned
    sequence = [t for t in types(got) if t != "holding"]
    assert sequence == ["rollout_started", "step_advanced", "step_advanced", "promoted"]
    assert len({r.json()["id"] for r in got}) == len(got)  # nothing sent twice
    for request in got:
        assert verified(request.headers[SIGNATURE_HEADER], request.body, time.time())
    first = got[0]
    assert not verified(first.headers[SIGNATURE_HEADER], first.body + b" ", time.time())
    # a captured event replayed later: its t is too old for a receiver's 5-minute window
    assert not verified(first.headers[SIGNATURE_HEADER], first.body, time.time() + 301)
    bodies = [r.json() for r in got if r.json()["type"] != "holding"]
    assert [(b["share_before"], b["share_after"]) for b in bodies] == [
        (0.0, 0.05), (0.05, 0.25), (0.25, 1.0), (1.0, 1.0)]  # fmt: skip
    promoted = bodies[-1]
    assert promoted["phase"] == "Promoted" and promoted["model"] == "digits"
    assert promoted["controller"] == HOLDER and promoted["rollout_id"] == 1
    assert promoted["step"] == 3 and promoted["severity"] == "info"
    assert RFC3339.match(promoted["time"])
    # a hold is sent again only after 10 intervals with the same reason: a 3 s bake at 1 s
    # intervals holds a few times a step with one reason, so one holding event each of 3 steps
    assert types(got).count("holding") == 3
    delivered = registry.get_sample_value(
        "canary_notifications_total",
        {"model": "digits", "receiver": "127.0.0.1", "outcome": "delivered"},
    )
    assert delivered == len(got)


def test_a_rolled_back_rollout_says_why_with_the_failing_gates_numbers(tmp_path: Path) -> None:
    with http_receiver() as receiver:
        everything = {"url": f"{receiver.url}/all"}
        critical = {"url": f"{receiver.url}/pager", "name": "pager", "min_severity": "critical"}
        only = {"url": f"{receiver.url}/ends", "name": "ends",
                "events": ["promoted", "rolled_back"]}  # fmt: skip
        controller, source, _ = controller_for(tmp_path, [everything, critical, only])
        source.window = failing_window()
        assert controller.run(Launch(GATEWAYS)) == EXIT_ROLLED_BACK
        got, paged, ends = receiver.on("/all"), receiver.on("/pager"), receiver.on("/ends")
    assert types(got) == ["rollout_started", "holding", "rolled_back"]
    assert types(paged) == types(ends) == ["rolled_back"]
    rolled = got[-1].json()
    assert rolled["cause"] == "min_agreement" and rolled["severity"] == "critical"
    assert rolled["share_before"] == 0.05 and rolled["share_after"] == 0.0
    assert "min_agreement failed 2 analyses in a row" in rolled["reason"]
    (gate,) = [g for g in rolled["numbers"]["gates"] if g["gate"] == "min_agreement"]
    assert gate["verdict"] == "fail" and gate["value"] == pytest.approx(0.5)
    assert gate["threshold"] == 0.9 and gate["high"] < 0.9


def test_a_silent_receiver_never_holds_a_tick_and_every_event_is_counted(tmp_path: Path) -> None:
    timeout = 0.5
    with silent_receiver() as silent, closed_port() as refused, http_receiver() as healthy:
        receivers: list[dict[str, Any]] = [
            {"url": silent, "name": "silent", "timeout_seconds": timeout, "max_attempts": 2,
             "backoff_seconds": 0.05, "queue_size": 3},
            {"url": refused, "name": "down", "timeout_seconds": timeout, "max_attempts": 3,
             "backoff_seconds": 0.01},
            {"url": f"{healthy.url}/all", "name": "healthy", "timeout_seconds": timeout},
        ]  # fmt: skip
        controller, _, registry = controller_for(tmp_path, receivers)
        controller.start(Launch(GATEWAYS))
        ticks = []
        while not controller.state.phase.terminal:
            began = time.perf_counter()
            controller.tick()
            ticks.append(time.perf_counter() - began)
            controller.clock.sleep(1)  # type: ignore[attr-defined]
        closing = time.perf_counter()
        controller.notifications.close(controller.notifications.flush_seconds)
        closed = time.perf_counter() - closing
        sent = len(healthy.on("/all"))

    def count(receiver: str, outcome: str) -> float:
        labels = {"model": "digits", "receiver": receiver, "outcome": outcome}
        return registry.get_sample_value("canary_notifications_total", labels) or 0.0

    assert len(ticks) > 8 and max(ticks) < timeout  # each tick: well under one attempt
    assert closed < controller.notifications.flush_seconds + 2 * timeout + 1.5
    assert count("healthy", "delivered") == sent > 0
    assert count("silent", "delivered") == count("down", "delivered") == 0
    for receiver in ("silent", "down"):  # every event ends failed or dropped, none lost
        assert count(receiver, "failed") + count(receiver, "dropped") == sent
    assert count("silent", "dropped") > 0  # its queue of 3 overflowed
    assert count("down", "retried") == 2 * count("down", "failed")


def test_the_slack_payload_is_an_incoming_webhook_message(tmp_path: Path) -> None:
    with http_receiver() as receiver:
        slack = {"url": f"{receiver.url}/services/T0/B0/XXXX", "format": "slack"}
        controller, source, _ = controller_for(tmp_path, [slack], model="news-classifier")
        source.window = failing_window()
        controller.run(Launch(GATEWAYS))
        got = receiver.on("/services/T0/B0/XXXX")
    assert got and all(r.headers["Content-Type"] == "application/json" for r in got)
    for message in (r.json() for r in got):
        jsonschema.validate(message, SLACK_MESSAGE)
    rolled = got[-1].json()
    assert rolled["text"].startswith(":red_circle: news-classifier rollout 1: rolled back")
    assert "min_agreement: 0.5 [" in rolled["blocks"][-1]["text"]["text"]


def test_the_cloudevents_payload_validates_against_the_cloudevents_schema(tmp_path: Path) -> None:
    with http_receiver() as receiver:
        sink = {"url": f"{receiver.url}/events", "format": "cloudevents"}
        controller, _, _ = controller_for(tmp_path, [sink])
        controller.run(Launch(GATEWAYS))
        got = receiver.on("/events")
    assert got
    for request in got:
        assert request.headers["Content-Type"].startswith("application/cloudevents+json")
        event = request.json()
        jsonschema.validate(event, SCHEMA)
        assert event["specversion"] == "1.0" and RFC3339.match(event["time"])
        assert event["type"] == "io.distill-gateway.canary." + event["data"]["type"]
        assert event["id"] == event["data"]["id"] and event["source"] == "/distill-canary/digits"
    assert got[-1].json()["data"]["type"] == "promoted"
    with pytest.raises(jsonschema.ValidationError):  # the schema is not one that passes anything
        jsonschema.validate({**got[0].json(), "specversion": ""}, SCHEMA)


def test_a_receiver_whose_secret_is_unset_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    receiver = Receiver(url="http://hooks.example/x", secret_env="NO_SUCH_KEY")
    with pytest.raises(NotifyError, match=r"notify\[0\] \(hooks.example\): secret_env "
                       "NO_SUCH_KEY is not set"):  # fmt: skip
        Notifications([receiver], 1.0, lambda receiver, outcome: None)


def test_holding_is_sent_again_only_when_its_reason_changes_or_after_n_intervals() -> None:
    with http_receiver() as receiver:
        hook = Receiver(url=f"{receiver.url}/h", holding_every_intervals=3)
        counts: list[tuple[str, str]] = []
        notifications = Notifications([hook], 10.0, lambda r, o: counts.append((r, o)))
        state = RolloutState(steps=[5, 100], policy={"model": "digits"})
        reasons = [(0, "baking 1 of 60 s"), (10, "baking 11 of 60 s"), (20, "baking 21 of 60 s"),
                   (30, "baking 31 of 60 s"), (40, "inconclusive: min_agreement (12 samples)"),
                   (50, "inconclusive: min_agreement (19 samples)")]  # fmt: skip
        for at, reason in reasons:
            notifications.emit(RolloutEvent(EventType.HOLDING, 1000.0 + at, HOLDER,
                                            {"rollout_id": 1, "model": "digits"}, 0.05, 0.05,
                                            reason))  # fmt: skip
        notifications.emit(watch_alert(state, HOLDER, 2000.0, "accuracy fell", {"drop": 0.04}))
        notifications.close(5.0)
        got = receiver.on("/h")
    assert [r.json()["reason"] for r in got] == [
        "baking 1 of 60 s", "baking 31 of 60 s", "inconclusive: min_agreement (12 samples)",
        "accuracy fell"]  # fmt: skip
    alert = got[-1].json()
    assert alert["type"] == "watch_alert" and alert["severity"] == Severity.CRITICAL
    assert counts == [("127.0.0.1", "delivered")] * 4


def test_the_exporter_starts_every_receivers_outcomes_at_zero() -> None:
    registry = CollectorRegistry()
    ControllerMetrics(registry, "digits").add_receivers(["ops"], ("delivered", "dropped"))
    labels = {"model": "digits", "receiver": "ops", "outcome": "dropped"}
    assert registry.get_sample_value("canary_notifications_total", labels) == 0.0


# Slack's incoming-webhook message as far as we use it (https://api.slack.com/messaging/webhooks,
# https://api.slack.com/reference/block-kit/blocks): a text, and blocks of kind section (a
# mrkdwn or plain_text object of at most 3,000 characters) or context (at most 10 elements).
_TEXT = {
    "type": "object",
    "required": ["type", "text"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": ["mrkdwn", "plain_text"]},
        "text": {"type": "string", "minLength": 1, "maxLength": 3000},
    },
}
SLACK_MESSAGE = {
    "type": "object", "required": ["text"],
    "properties": {
        "text": {"type": "string", "minLength": 1},
        "blocks": {"type": "array", "maxItems": 50, "items": {"oneOf": [
            {"type": "object", "required": ["type", "text"], "additionalProperties": False,
             "properties": {"type": {"const": "section"}, "text": _TEXT}},
            {"type": "object", "required": ["type", "elements"], "additionalProperties": False,
             "properties": {"type": {"const": "context"},
                            "elements": {"type": "array", "minItems": 1, "maxItems": 10,
                                         "items": _TEXT}}},
        ]}},
    },
}  # fmt: skip


def test_pause_resume_drift_and_the_lease_changing_hands_are_each_one_event(
    tmp_path: Path,
) -> None:
    """Operators' commands, a share changed behind the controller's back, a takeover and the
    old controller finding its lease gone."""
    store, fleet, clock = RolloutStore.create(tmp_path / "r.db"), FakeFleet(GATEWAYS), Clock()
    second_holder = "test-host-b:2:bbbb"
    with http_receiver() as receiver:
        quiet = {"url": f"{receiver.url}/ops", "events": [
            "paused", "resumed", "share_drift", "lease_taken", "lease_lost"]}  # fmt: skip
        first, _, _ = make_controller(store, fleet, clock, HOLDER, bake_seconds=1000,
                                      max_step_seconds=1000, notify=[quiet])  # fmt: skip
        first.start(Launch(GATEWAYS))
        first.tick()
        for command in (Command.PAUSE, Command.PAUSE, Command.RESUME):  # the 2nd is refused
            store.send(first.state.rollout_id, command, "sre@host", 60, clock())
            first.tick()
        fleet.operator_put(GATEWAYS[0], 0.5)
        first.tick()  # drift: set again
        clock.now += 60  # the first controller hung past its lease
        second, _, _ = make_controller(store, fleet, clock, second_holder, bake_seconds=1000,
                                       max_step_seconds=1000, notify=[quiet])  # fmt: skip
        second.start(Launch(GATEWAYS))
        first.notifications.close(2.0)
        second.notifications.close(2.0)
        # a third, on a state file of its own, loses its lease mid-run to a fourth
        other = RolloutStore.create(tmp_path / "other.db")
        third, _, _ = make_controller(other, FakeFleet(GATEWAYS), clock, HOLDER,
                                      bake_seconds=1000, max_step_seconds=1000,
                                      notify=[quiet])  # fmt: skip

        def taken_over(seconds: float) -> None:
            clock.sleep(seconds)
            other.acquire(
                second_holder, ttl=1000, now=clock.now + 100, model="digits"
            )  # as if it lapsed

        third.sleep = taken_over
        assert third.run(Launch(GATEWAYS)) == EXIT_REFUSED
        got = receiver.on("/ops")
    assert types(got) == ["paused", "resumed", "share_drift", "lease_taken", "lease_lost"]
    by_type = {r.json()["type"]: r.json() for r in got}
    assert by_type["paused"]["reason"] == "paused by an operator (sre@host)"
    assert by_type["paused"]["severity"] == "warning"
    assert by_type["lease_taken"]["controller"] == second_holder
    assert HOLDER in by_type["lease_taken"]["reason"]
    assert by_type["lease_lost"]["controller"] == HOLDER
    assert "http://gw-1 reports share 0.5" in by_type["share_drift"]["reason"]


def test_run_refuses_a_receiver_whose_secret_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from controller.cli import app

    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    policy = tmp_path / "policy.yaml"
    receiver = "{url: 'http://127.0.0.1:9/x', name: ops, secret_env: NO_SUCH_KEY}"
    policy.write_text(f"gates: {{min_agreement: 0.9}}\nnotify: [{receiver}]\n")
    state = str(tmp_path / "s.db")
    arguments = [
        "run",
        "--policy",
        str(policy),
        "--gateway",
        "http://127.0.0.1:9",
        "--model",
        "digits",
        "--state",
        state,
    ]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2
    assert "notify[0] (ops): secret_env NO_SUCH_KEY is not set" in result.stderr


def test_a_rollback_with_gates_that_have_no_data_reaches_a_strict_parser_in_every_format(
    tmp_path: Path,
) -> None:
    """No traffic: every gate's value and bounds are NaN, and an abort sends them. The receiver
    parses like Go's encoding/json (orjson: NaN or Infinity is an error): each value arrives as
    null, in each format, and nothing is refused."""
    with http_receiver() as receiver:
        sinks = [{"url": f"{receiver.url}/{kind}", "name": kind, "format": kind}
                 for kind in ("json", "cloudevents", "slack")]  # fmt: skip
        gates = {"min_agreement": 0.9, "max_latency_ms": 50}
        controller, source, registry = controller_for(tmp_path, sinks, gates=gates)
        source.window = WindowMetrics()  # nothing served: no gate has data
        controller.start(Launch(GATEWAYS))
        for _ in range(3):
            controller.tick()
            controller.clock.sleep(1)  # type: ignore[attr-defined]
        assert [g["value"] for g in controller.state.last_analysis] != [None, None]
        controller.store.send(1, Command.ABORT, "ops@host", 60.0, controller.clock())
        controller.tick()
        controller.notifications.close(5.0)
        plain, wrapped, slack = (
            receiver.on(f"/{kind}") for kind in ("json", "cloudevents", "slack")
        )
    rolled = plain[-1].json()  # strict: a NaN would raise here
    assert rolled["type"] == "rolled_back" and rolled["cause"] == "abort"
    numbers = {g["gate"]: g for g in rolled["numbers"]["gates"]}
    assert set(numbers) == {"min_agreement", "max_latency_ms"}
    for gate in numbers.values():
        assert gate["value"] is None and gate["low"] is None and gate["high"] is None
    assert wrapped[-1].json()["data"]["numbers"] == rolled["numbers"]
    assert slack[-1].json()["text"].startswith(":red_circle: digits rollout 1: rolled back")

    def count(receiver: str, outcome: str) -> float:
        labels = {"model": "digits", "receiver": receiver, "outcome": outcome}
        return registry.get_sample_value("canary_notifications_total", labels) or 0.0

    for kind, got in (("json", plain), ("cloudevents", wrapped), ("slack", slack)):
        assert count(kind, "delivered") == len(got) and count(kind, "rejected") == 0


def test_infinite_bounds_are_null_and_an_event_that_cannot_be_encoded_fails_alone() -> None:
    """A watch alert with an infinite bound arrives with null there; an event whose numbers are
    not JSON is counted failed, and the worker goes on to deliver the next one."""
    with http_receiver() as receiver:
        counts: list[str] = []
        notifications = Notifications([Receiver(url=f"{receiver.url}/h")], 10.0,
                                      lambda r, o: counts.append(o))  # fmt: skip
        state = RolloutState(steps=[5, 100], policy={"model": "digits"})
        bounds = {"low": -math.inf, "high": math.inf, "value": [1.5, math.nan]}
        notifications.emit(watch_alert(state, HOLDER, 2000.0, "bad", {"unjsonable": object()}))
        notifications.emit(watch_alert(state, HOLDER, 2001.0, "unbounded", bounds))
        notifications.close(5.0)
        got = receiver.on("/h")
    assert [r.json()["reason"] for r in got] == ["unbounded"]
    assert got[0].json()["numbers"] == {"low": None, "high": None, "value": [1.5, None]}
    assert counts == ["failed", "delivered"]


def test_a_receiver_trickling_its_answer_is_cut_at_the_timeout_and_counted() -> None:
    """One byte every 50 ms for ever: each attempt ends at its 0.3 s total deadline, so the
    event fails after its 2 attempts and close() returns soon after, with the event counted."""
    with trickling_receiver() as slow:
        counts: list[str] = []
        hook = Receiver(url=slow, timeout_seconds=0.3, max_attempts=2, backoff_seconds=0.05)
        notifications = Notifications([hook], 10.0, lambda r, o: counts.append(o))
        state = RolloutState(steps=[5, 100], policy={"model": "digits"})
        began = time.perf_counter()
        notifications.emit(watch_alert(state, HOLDER, 2000.0, "slow", {}))
        notifications.close(5.0)
        took = time.perf_counter() - began
    assert counts == ["retried", "failed"]
    assert 2 * 0.3 <= took < 2 * 0.3 + 0.05 + 1.0


def test_close_counts_the_call_in_hand_when_the_worker_outlives_it() -> None:
    """A transport that ignores cancellation (it blocks its thread) holds the worker past
    close()'s join: close counts that event dropped, and the worker does not count it again."""
    release = threading.Event()

    def stuck(request: httpx.Request) -> httpx.Response:
        release.wait(10.0)
        return httpx.Response(200)

    counts: list[str] = []
    hook = Receiver(url="http://stuck.example/h", timeout_seconds=0.1, max_attempts=1)
    notifications = Notifications([hook], 10.0, lambda r, o: counts.append(o),
                                  transport=httpx.MockTransport(stuck))  # fmt: skip
    state = RolloutState(steps=[5, 100], policy={"model": "digits"})
    notifications.emit(watch_alert(state, HOLDER, 2000.0, "stuck", {}))
    notifications.emit(watch_alert(state, HOLDER, 2001.0, "queued", {}))
    notifications.close(0.0)  # joins the worker for timeout + 1 s, then gives up on it
    assert sorted(counts) == ["dropped", "dropped"]  # the call in hand and the queued one
    release.set()
    worker = notifications._deliveries[0]._thread
    worker.join(5.0)
    assert not worker.is_alive() and sorted(counts) == ["dropped", "dropped"]
