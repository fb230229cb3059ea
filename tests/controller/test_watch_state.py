"""What the post-promotion watch keeps and sets beside its verdicts: the shadow sample rate on
every gateway (and back at the end), its window across a restart (in the rollout store), its
series in the controller's exporter, its alpha across windows, and a reference read from the
registry's profile of the training split (``distill-models profile``)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from controller.cli import _reference
from controller.exporter import ControllerMetrics
from controller.metric_names import WATCH_LOOKS, WATCH_VERDICTS, WATCH_WINDOW_STARTED
from controller.rollout_store import RolloutStore
from controller.shadow_rate import ShadowRateSetter
from controller.sources import Mark
from controller.watch import (
    Outcome,
    Reference,
    Watch,
    promoted_rollout,
    registry_reference,
)
from controller.watch_policy import DRIFT_CHECKS, WatchPolicy
from models import REGISTRY_PATH, STUDENT_PATH
from models import registry as reg
from models.drift_profile import training_profile
from tests.controller import test_watch
from tests.controller.fakes import FakeFleet
from tests.controller.test_watch import (
    DIGITS,
    INTERVAL,
    ROWS_PER_LOOK,
    SHIFTS,
    Digits,
    Traffic,
    _digit_rows,
    _looks,
    _policy,
)

digits = test_watch.digits  # the fixture: the test split and the shipped student
STUDENT_ID = "f6dd4edc5b382a10"  # the shipped student's registry id


class ShadowGateways:
    """Gateways answering ``GET|PUT /admin/models/digits/shadow`` (httpx's mock transport): each
    with its own rate; ``down`` refuse connections, ``old`` have no such route (404)."""

    def __init__(self, rates: dict[str, float]) -> None:
        self.rates, self.down, self.old = dict(rates), set[str](), set[str]()
        self.configured = dict(rates)  # each one's config's rate
        self.calls: list[tuple[str, str, str | None]] = []  # method, gateway, bearer token

    def handle(self, request: httpx.Request) -> httpx.Response:
        url = f"{request.url.scheme}://{request.url.host}"
        self.calls.append((request.method, url, request.headers.get("authorization")))
        if url in self.down:
            raise httpx.ConnectError("connection refused")
        if url in self.old or request.url.path != "/admin/models/digits/shadow":
            return httpx.Response(404, json={"detail": "Not Found"})
        if request.method == "PUT":
            self.rates[url] = json.loads(request.content)["sample_rate"]
        return httpx.Response(200, json={"model": "digits", "sample_rate": self.rates[url],
                                         "configured": self.configured[url]})  # fmt: skip


def test_the_shadow_rate_is_set_on_every_gateway_retried_where_it_failed_and_put_back() -> None:
    gateways = ShadowGateways({"http://g1": 0.1, "http://g2": 0.5, "http://g3": 0.2})
    gateways.down.add("http://g2")
    gateways.old.add("http://g3")
    client = httpx.Client(transport=httpx.MockTransport(gateways.handle))
    setter = ShadowRateSetter("digits", 0.01, client, lambda: sorted(gateways.rates), "secret")
    problems = setter.apply()
    assert gateways.rates["http://g1"] == 0.01 and not setter.everywhere()
    assert [p.split(":")[0] + ":" + p.split(":")[1] for p in problems] == ["http://g2",
                                                                           "http://g3"]  # fmt: skip
    assert "unreachable" in problems[0] and "configured shadow.sample_rate applies" in problems[1]
    assert {token for _, _, token in gateways.calls} == {"Bearer secret"}
    gateways.down.clear()  # g2 is back: the next look sets it; g3 (no route) is not asked again
    calls = len(gateways.calls)
    assert setter.apply() == []
    assert gateways.rates["http://g2"] == 0.01
    # each look reads every gateway's rate; g2 is set, g1 (still ours) is not set again
    assert [(m, url) for m, url, _ in gateways.calls[calls:]] == [
        ("GET", "http://g1"), ("GET", "http://g2"), ("PUT", "http://g2")]  # fmt: skip
    gateways.rates["http://g1"] = 0.1  # g1 restarted: back at its config's rate
    assert setter.apply() == [] and gateways.rates["http://g1"] == 0.01
    assert setter.restore() == []  # each gateway's own rate back, the old one untouched
    assert gateways.rates == {"http://g1": 0.1, "http://g2": 0.5, "http://g3": 0.2}


def test_a_watch_restarted_after_a_crash_puts_the_configured_rate_back() -> None:
    """The first watch died without restoring: the next reads 0.01 as the rate now, and still
    puts the config's back."""
    gateways = ShadowGateways({"http://g1": 0.1})
    gateways.rates["http://g1"] = 0.01
    client = httpx.Client(transport=httpx.MockTransport(gateways.handle))
    setter = ShadowRateSetter("digits", 0.01, client, lambda: ["http://g1"], "secret")
    assert setter.apply() == [] and setter.everywhere()
    assert setter.restore() == [] and gateways.rates["http://g1"] == 0.1


def test_a_restarted_watch_keeps_its_window_reference_and_looks(
    digits: Digits, tmp_path: Path
) -> None:
    x, _, run = digits
    clock, rng = [time.time()], np.random.default_rng(20)
    traffic = Traffic("digits", DIGITS, run, clock)
    store, holder = RolloutStore.create(tmp_path / "state.db"), "host:1:watch"
    store.acquire(holder, 300.0, clock[0], model="digits")
    rollout = store.add(promoted_rollout("digits"), holder)
    policy = _policy("digits", on_breach="alert", reference_seconds=INTERVAL * 2)
    fleet = FakeFleet(["http://g1"])

    def watch(reference: Reference | None = None) -> Watch:
        saved = store.load(rollout.rollout_id)
        assert saved is not None
        return Watch(policy, traffic, fleet, lambda _: None, saved, reference,
                     clock=lambda: clock[0], holder=holder, store=store)  # fmt: skip

    first = watch()

    def unshifted(_: int) -> list[dict[str, np.ndarray]]:
        return _digit_rows(x, rng, ROWS_PER_LOOK)

    # the start, a look recording, the reference recorded (a new window), 3 judged looks
    outcomes = _looks(first, traffic, clock, unshifted, 5)
    assert outcomes[2].value == "watching" and first.reference is not None
    # the process stops; a new one on the same state file goes on with the window: its next
    # look is the window's 4th (alpha spent as over one window), against the same reference
    again = watch()
    assert again.reference is not None and again.reference.at == first.reference.at
    traffic.send(unshifted(0))
    clock[0] += INTERVAL
    look = again.tick()
    assert look.outcome is Outcome.WATCHING
    assert "look 4" in look.results[0].reason, look.results[0].reason
    # given another reference, the window judged against the old one is not continued
    other = Reference(first.reference.counts, None, at=first.reference.at + 1)
    fresh = watch(other)
    assert fresh.tick().reason == "window started"


def test_the_watch_counts_its_looks_verdicts_and_window_by_model(digits: Digits) -> None:
    x, _, run = digits
    clock, rng = [1000.0], np.random.default_rng(21)
    traffic = Traffic("digits", DIGITS, run, clock)
    traffic.send(_digit_rows(x, rng, 2000))
    reference = Reference.of(traffic.increase_since(Mark(0.0, {"g": {}})), "digits", 0.0)
    exported = CollectorRegistry()
    metrics = ControllerMetrics(exported, "digits")
    fleet = FakeFleet(["http://g1"])
    fleet.set_share(1.0)
    watch = Watch(_policy("digits", on_breach="alert"), traffic, fleet, lambda _: None,
                  promoted_rollout("digits"), reference, clock=lambda: clock[0],
                  metrics=metrics)  # fmt: skip

    def value(name: str, **labels: str) -> float | None:
        return exported.get_sample_value(name, {"model": "digits", **labels})

    assert value(WATCH_LOOKS, outcome="alerted") == 0.0  # every series from the start
    _looks(watch, traffic, clock, lambda _: _digit_rows(x, rng, ROWS_PER_LOOK), 2)
    assert value(WATCH_LOOKS, outcome="watching") == 3.0
    assert value(WATCH_VERDICTS, gate="max_input_psi", result="pass") == 2.0
    assert value(WATCH_WINDOW_STARTED) == 1000.0
    inverted = lambda _: _digit_rows(x, rng, ROWS_PER_LOOK, SHIFTS["inverted pixels"])  # noqa: E731
    _looks(watch, traffic, clock, inverted, 1)
    assert value(WATCH_LOOKS, outcome="alerted") == 1.0
    fails = [value(WATCH_VERDICTS, gate=gate, result="fail") for gate in DRIFT_CHECKS[:2]]
    assert sum(f or 0.0 for f in fails) >= 1.0  # the inputs, the predictions or both
    assert value(WATCH_WINDOW_STARTED) == clock[0]  # the alert started a new window


def test_a_false_alarm_budget_sets_each_window_s_alpha() -> None:
    assert WatchPolicy().window_alphas(0.95) == pytest.approx((0.05, 0.05))
    hourly = WatchPolicy(false_alarms_per_day=1.0)
    assert hourly.window_alphas(0.95) == pytest.approx((1 / 24, 0.0))  # all to the drift checks
    gated = WatchPolicy(false_alarms_per_day=1.0, gates={"max_error_rate": 0.01})
    assert gated.window_alphas(0.95) == pytest.approx((1 / 48, 1 / 48))
    with pytest.raises(ValueError, match="false_alarms_per_day 24 gives each 3600 s window"):
        WatchPolicy(false_alarms_per_day=24)


def test_simulate_post_promotion_reports_false_alarms_a_day_and_delays(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from controller.cli import app

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "model: digits\ngates: {min_agreement: 0.9}\n"
        "watch: {false_alarms_per_day: 0.5, window_seconds: 600, max_prediction_psi: null}\n"
    )
    result = CliRunner().invoke(app, ["simulate", "--post-promotion", "--policy", str(policy),
                                      "--days", "0.05", "--runs", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "alpha 0.00347 a window" in result.output  # 0.5 a day over 144 windows
    assert "unshifted, threshold 0.25: 0 alarms in 0.05 days, 0.00 a day (bound 0.50)" in (
        result.output
    )
    assert "shift PSI 1.0: found in 1 of 1 runs" in result.output


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry (the shipped one's copy) whose student has its training split's profile."""
    where = tmp_path_factory.mktemp("registry")
    shutil.copy(REGISTRY_PATH, where / "registry.json")
    shutil.copy(STUDENT_PATH, where / STUDENT_PATH.name)
    reg.set_profile(where / "registry.json", STUDENT_ID,
                    training_profile(where / "registry.json", STUDENT_ID))  # fmt: skip
    return where / "registry.json"


def test_the_registry_profile_of_the_training_split_is_a_reference_that_judges(
    digits: Digits,
    profiled: Path,
) -> None:
    x, _, run = digits
    reference, why = registry_reference(profiled, STUDENT_ID)
    assert reference is not None and why == ""
    assert reference.counts.rows == 1078 and reference.accuracy is not None
    assert reference.accuracy > 0.99  # the student on its training split
    clock, rng = [0.0], np.random.default_rng(22)
    traffic = Traffic("digits", DIGITS, run, clock)
    fleet = FakeFleet(["http://g1"])
    fleet.set_share(1.0)
    policy = _policy("digits", max_estimated_accuracy_drop=0.05)
    watch = Watch(policy, traffic, fleet, lambda _: None, promoted_rollout("digits"), reference,
                  clock=lambda: clock[0])  # fmt: skip
    # production traffic (the test split) is what training saw: 20 looks, no alarm
    outcomes = _looks(watch, traffic, clock, lambda _: _digit_rows(x, rng, ROWS_PER_LOOK), 20)
    assert set(outcomes) == {Outcome.WATCHING}
    inverted = lambda _: _digit_rows(x, rng, ROWS_PER_LOOK, SHIFTS["inverted pixels"])  # noqa: E731
    assert _looks(watch, traffic, clock, inverted, 3)[-1] is Outcome.ROLLED_BACK


def test_reference_registry_reads_the_rollout_s_student_else_falls_back_saying_why(
    profiled: Path,
) -> None:
    policy = _policy("digits", reference="registry")  # type: ignore[arg-type]
    rollout = promoted_rollout("digits")
    rollout.student = {"id": STUDENT_ID, "registry": str(profiled)}
    fallback = Reference(Reference.of({}, "digits", 0.0).counts, None, 5.0)
    found, why = _reference(policy, FakeFleet(["http://g1"]), rollout, REGISTRY_PATH, fallback)
    assert found is not None and found.counts.rows == 1078 and why == ""
    # the gateways' student, in a registry without a profile: the production reference
    fleet = FakeFleet(["http://g1"])
    fleet.set_student(STUDENT_ID)
    bare = profiled.parent / "bare.json"
    data = json.loads(profiled.read_text())
    del data["models"]["student"][reg.PROFILE_KEY]
    bare.write_text(json.dumps(data))
    found, why = _reference(policy, fleet, promoted_rollout("digits"), bare, fallback)
    assert found is fallback
    assert f"`distill-models profile {STUDENT_ID}` stores one" in why


def test_a_reference_binned_otherwise_is_not_judged_against_and_one_is_recorded(
    digits: Digits,
) -> None:
    """A profile made with drift.max_blocks 8 beside gateways counting 16 blocks: every feature
    would drift; the watch records a reference from the gateways instead, saying why."""
    x, _, run = digits
    clock, rng = [0.0], np.random.default_rng(23)
    traffic = Traffic("digits", DIGITS, run, clock)
    traffic.send(_digit_rows(x, rng, 2000))
    counts = Reference.of(traffic.increase_since(Mark(0.0, {"g": {}})), "digits", 0.0).counts
    eight = {key: bins for key, bins in counts.inputs.items() if int(key[2]) < 8}
    reference = Reference(replace(counts, inputs=eight), None, 0.0)
    fleet = FakeFleet(["http://g1"])
    fleet.set_share(1.0)
    watch = Watch(_policy("digits"), traffic, fleet, lambda _: None, promoted_rollout("digits"),
                  reference, clock=lambda: clock[0])  # fmt: skip
    watch.tick()
    traffic.send(_digit_rows(x, rng, ROWS_PER_LOOK))
    clock[0] += INTERVAL
    look = watch.tick()
    assert look.outcome is Outcome.RECORDING, look.reason
    assert "lacks ones they do (input pixels 10, input pixels 11, input pixels 12)" in look.reason
    assert fleet.puts[-1][1] == 1.0  # nothing rolled back
