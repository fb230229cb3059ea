"""The post-promotion watch (controller/watch.py) on real traffic summaries: the shipped digits
student (ONNX Runtime) and a two-input text classifier answer rows that gateway.drift summarises,
read as a scrape would; the fleet fakes only its HTTP calls. At a realistic rate
(20 requests a second, drift.sample_rate 0.5, a look every 30 s: 300 summarised rows a look),
shifted traffic (inverted pixels, noise, a changed class mix, longer texts, unseen tokens) is
acted on at the first look that has ``min_rows``; unshifted traffic raises no alarm."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from controller.cli import _watched, app
from controller.events import EventType, RolloutEvent
from controller.policy import Policy
from controller.promtext import Snapshot, increase
from controller.rollout_store import LeaseHeld, Phase, Record, RolloutStore
from controller.sources import Mark, MetricsSource
from controller.sources.prometheus import COUNTERS, GROUP_BY
from controller.status import render_status
from controller.watch import Outcome, Reference, Watch, promoted_rollout, reference_of_last_step
from gateway import metric_names as names
from gateway.drift import DriftCollector, DriftSummary, OutputKind
from gateway.drift_config import DriftConfig
from gateway.signature import Signature, TensorSpec
from models import STUDENT_PATH, TEST_SPLIT_PATH
from models.data import load_test_split
from tests import model_shapes
from tests.controller.fakes import FakeFleet

INTERVAL = 30.0
ROWS_PER_LOOK = 600  # 20 requests/s for 30 s, one row each; half of them summarised
DIGITS = Signature((TensorSpec("pixels", "FP32", (-1, 64)),),
                   (TensorSpec("logits", "FP32", (-1, 10)),))  # fmt: skip
TEXT = Signature(
    (TensorSpec("input_ids", "INT64", (-1, -1)), TensorSpec("attention_mask", "INT64", (-1, -1))),
    (TensorSpec("logits", "FP32", (-1, 4)),),
)


class Traffic(MetricsSource):
    """A gateway's drift summaries, fed rows by the test and scraped like /metrics."""

    def __init__(self, model: str, signature: Signature, run: Callable[[dict[str, np.ndarray]],
                 np.ndarray], clock: list[float]) -> None:  # fmt: skip
        self.summary = DriftSummary(model, signature, OutputKind("logits", True),
                                    DriftConfig(sample_rate=0.5), {})  # fmt: skip
        self.registry = CollectorRegistry()
        self.registry.register(DriftCollector(self.summary))
        self._run, self._clock = run, clock

    def send(self, requests: list[dict[str, np.ndarray]]) -> None:
        for inputs in requests:
            self.summary.observe(inputs, {"logits": self._run(inputs)}, True)

    def _scrape(self) -> Snapshot:
        """What parsing /metrics gives (test_drift_statistics checks that through the text),
        read from the collector directly: an hour of looks parses 60,000 lines otherwise."""
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in self.registry.collect() for s in family.samples}  # fmt: skip

    def mark(self) -> Mark:
        return Mark(at=self._clock[0], counters={"g": self._scrape()})

    def increase_since(self, mark: Mark) -> Snapshot:
        return increase(self._scrape(), mark.counters["g"])


def _policy(model: str, on_breach: str = "rollback", **checks: float) -> Policy:
    watch = {"interval_seconds": INTERVAL, "min_rows": 200, "on_breach": on_breach, **checks}
    return Policy.model_validate({"model": model, "gates": {"min_agreement": 0.9},
                                  "watch": watch})  # fmt: skip


def _watch(policy: Policy, traffic: Traffic,
           clock: list[float]) -> tuple[Watch, FakeFleet, list[RolloutEvent]]:  # fmt: skip
    fleet = FakeFleet(["http://g1", "http://g2"])
    fleet.set_share(1.0)
    events: list[RolloutEvent] = []
    reference = Reference.of(traffic.increase_since(Mark(0.0, {"g": {}})), policy.model, 0.0)
    watch = Watch(policy, traffic, fleet, events.append, promoted_rollout(policy.model), reference,
                  clock=lambda: clock[0])  # fmt: skip
    return watch, fleet, events


def _looks(watch: Watch, traffic: Traffic, clock: list[float], make: Callable[[int], Rows],
           looks: int) -> list[Outcome]:  # fmt: skip
    """Starts the window, then ``looks`` looks, each after INTERVAL seconds of traffic."""
    outcomes = [watch.tick().outcome]
    for n in range(looks):
        traffic.send(make(n))
        clock[0] += INTERVAL
        outcome = watch.tick().outcome
        outcomes.append(outcome)
        if outcome is Outcome.ROLLED_BACK:
            break
    return outcomes


Digits = tuple[np.ndarray, np.ndarray, Callable[[dict[str, np.ndarray]], np.ndarray]]
Rows = list[dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def digits() -> Digits:
    """The test split, and the shipped student as a function (its answers on the split's own
    rows computed once: an hour of looks sends 72,000 of them)."""
    session = ort.InferenceSession(str(STUDENT_PATH), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    split = load_test_split(TEST_SPLIT_PATH)
    logits: np.ndarray = session.run(None, {name: split.x})[0]
    known = {row.tobytes(): logits[i : i + 1] for i, row in enumerate(split.x)}

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        row = inputs["pixels"]
        if len(row) == 1 and row.tobytes() in known:
            return known[row.tobytes()]
        result: np.ndarray = session.run(None, {name: row})[0]
        return result

    return split.x, split.y, run


def _digit_rows(x: np.ndarray, rng: np.random.Generator, rows: int,
                change: Callable[[np.ndarray], np.ndarray] | None = None) -> Rows:  # fmt: skip
    picked = x[rng.integers(0, len(x), rows)]
    if change is not None:
        picked = change(picked)
    return [{"pixels": picked[i : i + 1].astype(np.float32)} for i in range(rows)]


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "inverted pixels": lambda r: 16.0 - r,
    "noise": lambda r: np.clip(r + np.random.default_rng(0).normal(0, 4, r.shape), 0, 16),
}


@pytest.mark.parametrize("shift", SHIFTS)
def test_shifted_digits_are_rolled_back_at_the_first_look(digits: Digits, shift: str) -> None:
    x, _, run = digits
    clock, rng = [0.0], np.random.default_rng(1)
    traffic = Traffic("digits", DIGITS, run, clock)
    traffic.send(_digit_rows(x, rng, 2000))  # the last step's traffic: the reference
    watch, fleet, events = _watch(_policy("digits"), traffic, clock)
    outcomes = _looks(watch, traffic, clock, lambda _: _digit_rows(x, rng, ROWS_PER_LOOK,
                                                                   SHIFTS[shift]), 5)  # fmt: skip
    assert outcomes[-1] is Outcome.ROLLED_BACK and len(outcomes) == 2  # one look: 30 s
    assert [share for _, share in fleet.puts[-2:]] == [0.0, 0.0]  # both gateways
    (event,) = events
    assert event.type is EventType.ROLLED_BACK and event.reason.startswith("drift: max_input_psi")
    assert watch.rollout.rollback_reason == event.reason


def test_unshifted_digits_raise_no_alarm_for_an_hour(digits: Digits) -> None:
    x, _, run = digits
    clock, rng = [0.0], np.random.default_rng(2)
    traffic = Traffic("digits", DIGITS, run, clock)
    traffic.send(_digit_rows(x, rng, 2000))
    policy = _policy("digits", max_estimated_accuracy_drop=0.05)
    watch, fleet, events = _watch(policy, traffic, clock)
    outcomes = _looks(watch, traffic, clock, lambda _: _digit_rows(x, rng, ROWS_PER_LOOK), 120)
    assert set(outcomes) == {Outcome.WATCHING} and events == []
    assert fleet.puts[-1][1] == 1.0


def test_a_changed_class_mix_is_alerted_on_through_the_notifiers(digits: Digits) -> None:
    x, y, run = digits
    clock, rng = [0.0], np.random.default_rng(3)
    traffic = Traffic("digits", DIGITS, run, clock)
    traffic.send(_digit_rows(x, rng, 2000))
    # predictions only: inputs are not judged, so the class mix must show in what it predicts
    policy = _policy("digits", on_breach="alert", max_input_psi=None)  # type: ignore[arg-type]
    watch, fleet, events = _watch(policy, traffic, clock)
    few = x[y <= 2]  # only zeros, ones and twos now
    outcomes = _looks(watch, traffic, clock, lambda _: _digit_rows(few, rng, ROWS_PER_LOOK), 3)
    assert outcomes[1] is Outcome.ALERTED  # every look of a new window alerts again
    assert events[0].type is EventType.WATCH_ALERT
    assert events[0].reason.startswith("drift: max_prediction_psi prediction logits 0 drifted")
    assert fleet.puts[-1][1] == 1.0  # alert only: the student keeps its share


@pytest.mark.parametrize("shift", ["longer texts", "unseen tokens"])
def test_a_text_classifier_sees_longer_texts_and_unseen_tokens(tmp_path: Path, shift: str) -> None:
    path = model_shapes.write_text_classifier(tmp_path / "student.onnx", seed=1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        result: np.ndarray = session.run(["logits"], inputs)[0]
        return result

    def rows(
        count: int, lengths: tuple[int, int], ids: tuple[int, int]
    ) -> list[dict[str, np.ndarray]]:
        out = []
        for length in rng.integers(*lengths, size=count).tolist():
            tokens = rng.integers(*ids, size=(1, length))
            out.append({"input_ids": tokens, "attention_mask": np.ones_like(tokens)})
        return out

    clock, rng = [0.0], np.random.default_rng(4)
    traffic = Traffic("text", TEXT, run, clock)
    traffic.send(rows(2000, (8, 17), (1, 48)))  # training-like: 8-16 tokens of the first 47 ids
    watch, _, events = _watch(_policy("text"), traffic, clock)
    lengths, ids = ((64, 101), (1, 48)) if shift == "longer texts" else ((8, 17), (48, 64))
    outcomes = _looks(watch, traffic, clock, lambda _: rows(ROWS_PER_LOOK, lengths, ids), 5)
    assert outcomes[-1] is Outcome.ROLLED_BACK and len(outcomes) == 2
    worst = "length" if shift == "longer texts" else "tokens input_ids"
    assert events[0].reason.startswith(f"drift: max_input_psi {worst}")


@pytest.mark.parametrize("recent_seconds", [300.0, 0.0])
def test_a_shift_late_in_a_long_window_is_found_in_its_recent_part(
    digits: Digits, recent_seconds: float
) -> None:
    """20 minutes of unshifted traffic in the window, then inverted pixels: the last 5 minutes
    see the shift once it is about half of them; the whole window alone waits until it outweighs
    a good part of 40 looks of old traffic."""
    x, _, run = digits
    clock, rng = [0.0], np.random.default_rng(5)
    traffic = Traffic("digits", DIGITS, run, clock)
    traffic.send(_digit_rows(x, rng, 2000))
    policy = _policy("digits", max_prediction_psi=None, recent_seconds=recent_seconds)  # type: ignore[arg-type]
    watch, _, _ = _watch(policy, traffic, clock)

    def rows(n: int) -> Rows:
        return _digit_rows(x, rng, ROWS_PER_LOOK, SHIFTS["inverted pixels"] if n >= 40 else None)

    outcomes = _looks(watch, traffic, clock, rows, 80)
    assert outcomes[-1] is Outcome.ROLLED_BACK
    looks_after_shift = len(outcomes) - 1 - 40
    if recent_seconds:
        assert looks_after_shift <= 6, looks_after_shift  # measured: 5 (150 s)
    else:
        assert looks_after_shift >= 20, looks_after_shift  # measured: 28 (14 min)


def test_a_promoted_rollout_leaves_its_last_step_as_the_reference(digits: Digits) -> None:
    x, _, run = digits
    clock, rng = [0.0], np.random.default_rng(6)
    traffic = Traffic("digits", DIGITS, run, clock)
    traffic.send(_digit_rows(x, rng, 100))  # earlier steps: not the reference
    rollout = promoted_rollout("digits")
    rollout.step_mark = traffic.mark().to_json()
    traffic.send(_digit_rows(x, rng, 1000))  # the last step, at 100 %
    reference = reference_of_last_step(traffic, rollout, "digits", 60.0)
    assert reference is not None and reference.counts.rows == 500  # half summarised
    assert reference_of_last_step(traffic, promoted_rollout("digits"), "digits", 60.0) is None


def _shifted_watch(digits: Digits, tmp_path: Path) -> tuple[
        Watch, Traffic, FakeFleet, list[RolloutEvent], list[float], RolloutStore, str]:  # fmt: skip
    """A watch of digits under the lease of a state file, over 2,000 reference rows."""
    x, _, run = digits
    clock, rng = [time.time()], np.random.default_rng(7)  # the lease's expiry is in real time
    traffic = Traffic("digits", DIGITS, run, clock)
    traffic.send(_digit_rows(x, rng, 2000))
    store, holder = RolloutStore.create(tmp_path / "state.db"), "host:1:watch"
    store.acquire(holder, 30.0, clock[0], model="digits")
    rollout = store.add(promoted_rollout("digits"), holder)
    watch, fleet, events = _watch(_policy("digits"), traffic, clock)
    watch.rollout, watch.store, watch.holder = rollout, store, holder
    return watch, traffic, fleet, events, clock, store, holder


def _inverted(digits: Digits) -> Callable[[int], Rows]:
    rng = np.random.default_rng(8)
    return lambda _: _digit_rows(digits[0], rng, ROWS_PER_LOOK, SHIFTS["inverted pixels"])


def test_a_rollback_no_gateway_confirms_is_retried_at_every_look_not_reported_done(
    digits: Digits, tmp_path: Path
) -> None:
    watch, traffic, fleet, events, clock, store, _ = _shifted_watch(digits, tmp_path)
    fleet.down.add("http://g2")  # g2 misses share 0 and keeps serving the student
    outcomes = _looks(watch, traffic, clock, _inverted(digits), 3)
    assert outcomes[1:] == [Outcome.ROLLBACK_UNCONFIRMED] * 3
    assert [e.type for e in events] == [EventType.ROLLBACK_UNCONFIRMED]  # once, not per retry
    assert "share 0 not confirmed everywhere" in events[0].reason
    assert fleet.traffic["http://g2"].student_share == 1.0
    fleet.down.clear()  # g2 is back: the next look's retry reaches it
    clock[0] += INTERVAL
    assert watch.tick().outcome is Outcome.ROLLED_BACK
    assert fleet.traffic["http://g2"].student_share == 0.0
    assert [e.type for e in events][-1] is EventType.ROLLED_BACK
    history = [r.action for r in store.load().history]  # type: ignore[union-attr]
    assert history[-4:] == [Record.ROLLBACK_UNCONFIRMED] * 3 + [Record.ROLLED_BACK]


def test_a_watch_stopped_before_share_0_is_confirmed_gives_up_unconfirmed(
    digits: Digits, tmp_path: Path
) -> None:
    watch, traffic, fleet, events, clock, store, _ = _shifted_watch(digits, tmp_path)
    watch.tick()  # the window starts
    traffic.send(_inverted(digits)(0))
    fleet.down.add("http://g1")
    looks: list[Outcome] = []

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    last = watch.run(lambda: len(looks) >= 3, sleep, lambda look: looks.append(look.outcome))
    assert last.outcome is Outcome.ROLLBACK_UNCONFIRMED and "gave up" in last.reason
    assert [e.type for e in events] == [EventType.ROLLBACK_UNCONFIRMED] * 2
    saved = store.load()
    assert saved is not None and saved.phase is Phase.ROLLED_BACK
    assert "gave up confirming share 0" in saved.history[-1].reason


def test_the_watch_holds_the_lease_records_its_looks_and_refuses_a_new_rollout(
    digits: Digits, tmp_path: Path
) -> None:
    x, _, _ = digits
    watch, traffic, fleet, _, clock, store, holder = _shifted_watch(digits, tmp_path)
    rng = np.random.default_rng(9)
    outcomes = _looks(watch, traffic, clock, lambda _: _digit_rows(x, rng, ROWS_PER_LOOK), 2)
    assert outcomes == [Outcome.WATCHING] * 3
    saved = store.load()
    assert saved is not None
    assert [(r.action, r.reason) for r in saved.history][-3:] == [
        (Record.WATCH, "watching: window started"), (Record.WATCH, "watching: no breach"),
        (Record.WATCH, "watching: no breach")]  # fmt: skip
    assert saved.history[-1].gates  # the numbers of each look
    with pytest.raises(LeaseHeld):  # a new rollout's controller
        store.acquire("host:2:rollout", 30.0, clock[0], model="digits")
    assert "post-promotion watch (host:1:watch) holds model digits" in _watched(store, "digits")
    with httpx.Client() as client:  # no gateways in this rollout: nothing is asked
        shown = render_status(store.load(), store, client, clock[0], history=3)  # type: ignore[arg-type]
    assert "controller: post-promotion watch host:1:watch" in shown
    assert "watch: watching: no breach" in shown
    # the lease taken over (the watch's lapsed): the watch stops before touching the fleet
    store.release(holder)
    store.acquire("host:2:rollout", 30.0, clock[0], model="digits")
    puts = len(fleet.puts)
    traffic.send(_inverted(digits)(0))
    clock[0] += INTERVAL
    assert watch.tick().outcome is Outcome.LEASE_LOST
    assert len(fleet.puts) == puts


def test_a_reference_under_min_rows_is_recorded_again_and_then_judges(digits: Digits) -> None:
    x, _, run = digits
    clock, rng = [0.0], np.random.default_rng(10)
    traffic = Traffic("digits", DIGITS, run, clock)
    traffic.send(_digit_rows(x, rng, 40))  # promote --full: the last step saw almost nothing
    policy = _policy("digits", reference_seconds=2 * INTERVAL)
    watch, _, events = _watch(policy, traffic, clock)
    assert watch.reference is None
    first = watch.tick()
    assert first.outcome is Outcome.RECORDING
    assert first.reason.startswith("the given reference has ")  # 20 of 40 rows summarised
    assert "under min_rows 200; recording the reference, 0 of 60 s" in first.reason
    outcomes: list[Outcome] = [first.outcome]
    for _ in range(2):  # 60 s of unshifted traffic: the reference
        traffic.send(_digit_rows(x, rng, ROWS_PER_LOOK))
        clock[0] += INTERVAL
        outcomes.append(watch.tick().outcome)
    assert outcomes == [Outcome.RECORDING, Outcome.RECORDING, Outcome.WATCHING]
    assert watch.reference is not None and watch.reference.counts.rows >= 200
    outcomes = _looks(watch, traffic, clock, _inverted(digits), 3)
    assert outcomes[-1] is Outcome.ROLLED_BACK and events[-1].type is EventType.ROLLED_BACK


class NoDrift(MetricsSource):
    """A metrics source that never has the drift counters (drift off on the gateways)."""

    def mark(self) -> Mark:
        return Mark(at=0.0, counters={"g": {}})

    def increase_since(self, mark: Mark) -> Snapshot:
        return {}


def test_drift_checks_without_rows_for_blind_looks_are_alerted_on(digits: Digits) -> None:
    x, _, run = digits
    clock = [0.0]
    traffic = Traffic("digits", DIGITS, run, clock)
    traffic.send(_digit_rows(x, np.random.default_rng(11), 2000))
    reference = Reference.of(traffic.increase_since(Mark(0.0, {"g": {}})), "digits", 0.0)
    events: list[RolloutEvent] = []
    policy = _policy("digits", blind_looks=3)
    watch = Watch(policy, NoDrift(), FakeFleet(["http://g1"]), events.append,
                  promoted_rollout("digits"), reference, clock=lambda: clock[0])  # fmt: skip
    looks = [watch.tick() for _ in range(7)]
    assert [look.outcome for look in looks] == [Outcome.WATCHING] * 3 + [Outcome.ALERTED] + [
        Outcome.WATCHING] * 2 + [Outcome.ALERTED]  # fmt: skip
    assert looks[3].reason.startswith("blind: no drift rows for 3 looks")
    assert [e.type for e in events] == [EventType.WATCH_ALERT] * 2


def test_the_prometheus_source_reads_every_drift_counter_by_its_labels() -> None:
    """PromQL sums away any label not in GROUP_BY: each drift counter and label must be in it."""
    read = {names.DRIFT_ROWS: (), names.DRIFT_STUDENT_ROWS: (),
            names.DRIFT_CONFIDENCE_SUM: (), names.DRIFT_INPUT_VALUES: ("input", "block", "bin"),
            names.DRIFT_SEQUENCE_LENGTH: ("input", "bin"), names.DRIFT_TOKEN_IDS: ("input", "bin"),
            names.DRIFT_PREDICTIONS: ("output", "block", "bin")}  # fmt: skip
    grouped = {label.strip() for label in GROUP_BY.split(",")}
    for counter, labels in read.items():
        assert counter in COUNTERS
        assert set(labels) <= grouped, counter


def test_run_and_a_second_watch_are_refused_while_a_watch_holds_the_model(tmp_path: Path) -> None:
    path, policy = tmp_path / "state.db", tmp_path / "policy.yaml"
    policy.write_text("model: digits\ngates: {max_kl: 1}\nwatch: {on_breach: rollback}\n")
    store = RolloutStore.create(path)
    store.acquire("elsewhere:1:watch", 300.0, time.time(), model="digits")  # a live watch's lease
    store.add(promoted_rollout("digits"), "elsewhere:1:watch")
    gateway = ["--gateway", "http://127.0.0.1:9", "--policy", str(policy), "--state", str(path)]
    result = CliRunner().invoke(app, ["run", "--new", *gateway])
    assert result.exit_code == 5, result.output
    assert "a post-promotion watch (elsewhere:1:watch) holds model digits" in result.stderr
    result = CliRunner().invoke(app, ["watch", "--model", "digits", *gateway])
    assert result.exit_code == 5 and "elsewhere:1:watch holds" in result.stderr
    assert store.lease("digits") is not None and store.lease("digits").holder == "elsewhere:1:watch"  # type: ignore[union-attr]


def test_the_watch_s_lease_outlasts_the_time_between_its_looks(digits: Digits,
                                                               tmp_path: Path) -> None:  # fmt: skip
    """A rollout ticking every 5 s leases for 15 s; a watch looking every 30 s must not let that
    lapse between looks (a new rollout could take it in the gap)."""
    watch, _, _, _, clock, store, _ = _shifted_watch(digits, tmp_path)
    watch.policy = watch.policy.model_copy(update={"interval_seconds": 5.0})
    assert watch.policy.lease_seconds == 15.0
    watch.tick()
    lease = store.lease("digits")
    assert lease is not None and lease.expires_at - clock[0] == 3 * INTERVAL
