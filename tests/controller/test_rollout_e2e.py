"""Rollouts end to end: real gateways, a real traffic generator, the real CLI in subprocesses.

Given gateways serving a student under traffic, when `distill-canary run` runs a policy, then the
share on every gateway and the controller's exit code tell the story.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from controller.rollout_store import Phase, RolloutStore
from models import MODELS_DIR
from tests.rollouts import (
    FAST_POLICY,
    canary_command,
    canary_env,
    controller_at_first_step,
    gateway_config,
    operator,
    roll_out,
    run_canary,
    saved,
    share_of,
    traffic,
    write_policy,
)
from tests.servers import ADMIN_TOKEN, BIN, TestGateway, free_port, read_metric, wait_until

pytestmark = pytest.mark.e2e  # runs the CLI against real gateways

StartGateway = Callable[..., TestGateway]


def test_a_good_student_is_promoted(start_gateway: StartGateway, tmp_path: Path) -> None:
    gateway = start_gateway(gateway_config())
    state = tmp_path / "rollout.db"
    result = roll_out(gateway, write_policy(tmp_path), state)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rollout Promoted" in result.stdout
    assert share_of(gateway) == 1.0
    rollout = saved(state)
    assert rollout.phase is Phase.PROMOTED
    entered = [r.share for r in rollout.history if r.action == "set"]
    assert entered == [0.05, 0.25, 1.0]
    status = operator("status", state)
    assert status.returncode == 0 and "phase: Promoted" in status.stdout


def test_a_bad_student_is_rolled_back_at_the_first_step(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_config(MODELS_DIR / "student_bad.onnx"))
    state = tmp_path / "rollout.db"
    result = roll_out(gateway, write_policy(tmp_path), state)
    assert result.returncode == 3, result.stdout + result.stderr
    assert share_of(gateway) == 0.0
    rollout = saved(state)
    assert rollout.phase is Phase.ROLLED_BACK
    assert {r.step_index for r in rollout.history} == {0}  # never left the first step
    assert "min_agreement" in rollout.rollback_reason
    # The decision line names the failing gate, its value and the threshold (status and the
    # report have the interval).
    assert any(
        re.search(r" rollback: .*\[.*min_agreement 0\.\d+ < 0\.9", line)
        for line in result.stdout.splitlines()
    ), result.stdout


def test_two_gateways_are_moved_and_verified_together(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateways = [start_gateway(gateway_config()), start_gateway(gateway_config())]
    state = tmp_path / "rollout.db"
    with traffic(*gateways):
        result = run_canary(canary_command(gateways, write_policy(tmp_path), state))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [share_of(g) for g in gateways] == [1.0, 1.0]
    assert "every gateway (2) confirmed share 25%" in result.stdout
    # Both gateways' traffic was analysed: each served student requests.
    for gateway in gateways:
        served = gateway.metric("gateway_requests_total", backend="student", code="200")
        assert served > 0


def test_an_unreachable_gateway_holds_the_rollout(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_config())
    dead = TestGateway(tmp_path)  # never started: nothing listens on its port
    state = tmp_path / "rollout.db"
    with subprocess.Popen(
        canary_command([gateway, dead], write_policy(tmp_path), state),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=canary_env(),
    ) as controller:  # fmt: skip

        def held() -> bool:
            rollout = saved(state) if state.exists() else None
            return rollout is not None and len(rollout.history) >= 4

        wait_until(held, 60, "the controller to hold")
        rollout = saved(state)
        assert rollout.step_started_at is None  # the step's clock never started
        assert [r.action for r in rollout.history][:1] == ["started"]
        assert all(r.action == "hold" for r in rollout.history[1:])
        assert dead.url in rollout.history[-1].reason
        assert operator("abort", state).returncode == 0
        output, _ = controller.communicate(timeout=60)
    assert controller.returncode == 4, output  # rolled back, but the dead one never confirmed
    assert share_of(gateway) == 0.0
    assert "gave up confirming share 0" in saved(state).history[-1].reason


def test_a_killed_controller_resumes_at_the_same_step(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_config())
    state = tmp_path / "rollout.db"
    command = canary_command([gateway], write_policy(tmp_path, bake_seconds=4), state)
    with traffic(gateway):
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=canary_env())

        def at_second_step() -> bool:
            rollout = saved(state) if state.exists() else None
            return rollout is not None and rollout.step_index == 1 and bool(rollout.step_started_at)

        wait_until(at_second_step, 120, "the rollout to reach its second step")
        first.send_signal(signal.SIGKILL)
        first.wait()
        before = saved(state)
        generation = httpx.get(f"{gateway.url}/admin/traffic").json()["generation"]
        assert share_of(gateway) == 0.25

        result = run_canary(command)
    assert result.returncode == 0, result.stdout + result.stderr
    after = saved(state)
    assert after.started_at == before.started_at  # the same rollout, resumed
    sets_at_25 = [r for r in after.history if r.action == "set" and r.share == 0.25]
    assert len(sets_at_25) == 1  # the share was not set again on resume
    assert after.history[len(before.history)].step_index == 1  # first decision after: same step
    # Exactly one more change of the split after the restart: 25 % -> 100 %.
    assert httpx.get(f"{gateway.url}/admin/traffic").json()["generation"] == generation + 1


def test_operators_drive_a_running_rollout(start_gateway: StartGateway, tmp_path: Path) -> None:
    gateway = start_gateway(gateway_config())
    state = tmp_path / "rollout.db"
    metrics_port = free_port()
    policy = write_policy(tmp_path, bake_seconds=300, max_step_seconds=600, interval_seconds=1)
    command = canary_command(
        [gateway], policy, state, "--metrics-port", str(metrics_port), "--metrics-linger", "0"
    )

    def controller_metric(name: str, **labels: str) -> float:
        return read_metric(
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text, name, **labels
        )

    def phase_is(phase: Phase) -> Callable[[], bool]:
        return lambda: state.exists() and saved(state).phase is phase

    with (
        traffic(gateway),
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=canary_env()
        ) as controller,
    ):
        wait_until(lambda: share_of(gateway) == 0.05, 60, "the first step")

        assert operator("pause", state).returncode == 0
        wait_until(phase_is(Phase.PAUSED), 5, "the pause")
        wait_until(lambda: controller_metric("canary_phase", phase="Paused") == 1, 5, "metric")

        assert operator("resume", state).returncode == 0
        wait_until(phase_is(Phase.PROGRESSING), 5, "the resume")

        assert operator("promote", state).returncode == 0  # skip the 300 s bake
        wait_until(lambda: share_of(gateway) == 0.25, 5, "the promotion to the next step")
        wait_until(lambda: controller_metric("canary_step_index") == 1, 5, "the exported step")
        assert controller_metric("canary_student_share") == 0.25
        wait_until(lambda: controller_metric("canary_gate_threshold", gate="min_agreement") == 0.9,
                   10, "an analysis at the new step")  # fmt: skip

        assert operator("abort", state).returncode == 0
        output, _ = controller.communicate(timeout=30)
    assert controller.returncode == 3, output
    assert share_of(gateway) == 0.0
    assert "aborted by an operator" in saved(state).rollback_reason
    late = operator("pause", state)
    assert late.returncode == 1 and "RolledBack" in late.stderr


def test_an_operator_drill(start_gateway: StartGateway, tmp_path: Path) -> None:
    """Pause, kill -9, restart, resume, a share changed by hand, abort: each checked against the
    share the gateway really serves."""
    gateway = start_gateway(gateway_config())
    state = tmp_path / "rollout.db"
    policy = write_policy(tmp_path, bake_seconds=300, max_step_seconds=600, interval_seconds=0.5)
    command = canary_command([gateway], policy, state)

    def recorded(action: str) -> Callable[[], bool]:
        return lambda: any(r.action == action for r in saved(state).history)

    with traffic(gateway):
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=canary_env())
        wait_until(lambda: share_of(gateway) == 0.05, 60, "the first step")
        second = run_canary(command, timeout=60)
        assert second.returncode == 5 and "holds this rollout" in second.stderr, second.stderr

        paused = operator("pause", state)
        assert paused.returncode == 0 and "paused by an operator" in paused.stdout
        first.send_signal(signal.SIGKILL)
        first.wait()
        dead = operator("resume", state)
        assert dead.returncode == 1 and "no controller is running" in dead.stderr
        status = operator("status", state)
        assert "phase: Paused (paused by " in status.stdout
        assert "controller: none alive" in status.stdout
        generation = saved(state).generations[gateway.url]
        assert (f"{gateway.url}: intended 5% (generation {generation}), actual 5% "
                f"(generation {generation}) ok") in status.stdout  # fmt: skip

        restarted = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=canary_env()
        )
        wait_until(recorded("resumed"), 30, "the restarted controller")
        assert share_of(gateway) == 0.05 and saved(state).phase is Phase.PAUSED
        resumed = operator("resume", state)
        assert resumed.returncode == 0 and "resumed by an operator" in resumed.stdout

        httpx.put(f"{gateway.url}/admin/traffic", json={"student_share": 0.6},
                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
        wait_until(recorded("drift"), 10, "the drift to be caught")
        wait_until(lambda: share_of(gateway) == 0.05, 10, "the intended share again")

        aborted = operator("abort", state)
        assert aborted.returncode == 0 and "share 0 on every gateway" in aborted.stdout
        output, _ = restarted.communicate(timeout=60)
    assert restarted.returncode == 3, output
    assert share_of(gateway) == 0.0
    actions = [r.action for r in saved(state).history if r.action != "hold"]
    assert actions == ["started", "set", "pause", "resumed", "resume", "drift", "set",
                       "rollback", "rolled back"], actions  # fmt: skip
    again = run_canary(command, timeout=60)
    assert again.returncode == 5 and "pass --new" in again.stderr
    quiet = operator("status", state, "--history", "0")
    assert quiet.returncode == 0 and "decisions" not in quiet.stdout


def test_abort_now_rolls_back_with_no_controller(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_config())
    with controller_at_first_step(gateway, tmp_path) as (controller, state):
        controller.send_signal(signal.SIGKILL)
        controller.wait()
    plain = operator("abort", state)
    assert plain.returncode == 1 and "abort --now" in plain.stderr
    assert share_of(gateway) == 0.05  # nothing happened, and nothing says it did
    now = operator("abort", state, "--now")
    assert now.returncode == 0, now.stderr
    assert share_of(gateway) == 0.0
    rollout = saved(state)
    assert rollout.phase is Phase.ROLLED_BACK and "--now" in (rollout.rollback_reason or "")

    # retry: the same policy and gateways, from the first step, as a new rollout
    with subprocess.Popen(
        [str(BIN / "distill-canary"), "retry", "--state", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=canary_env(),
    ) as retried:  # fmt: skip
        wait_until(lambda: saved(state).rollout_id == 2 and share_of(gateway) == 0.05, 60,
                   "the retried rollout's first step")  # fmt: skip
        assert operator("abort", state).returncode == 0
        output, _ = retried.communicate(timeout=60)
    assert retried.returncode == 3, output
    first = RolloutStore.open_existing(state).load(1)
    assert first is not None and "--now" in (first.rollback_reason or "")  # kept


def test_sigterm_saves_releases_and_a_restart_resumes(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    """As in a pod: PID 1 gets SIGTERM, saves and exits; its metrics were reachable through an
    address other than 127.0.0.1 (the pod network, here 127.0.0.2)."""
    gateway = start_gateway(gateway_config())
    state = tmp_path / "rollout.db"
    port = free_port()
    policy = write_policy(tmp_path, bake_seconds=300, max_step_seconds=600)
    command = canary_command([gateway], policy, state, "--metrics-port", str(port),
                             "--metrics-host", "0.0.0.0", "--metrics-linger", "0")  # fmt: skip
    controller = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=canary_env())
    wait_until(lambda: share_of(gateway) == 0.05, 60, "the first step")
    scraped = httpx.get(f"http://127.0.0.2:{port}/metrics").text
    assert read_metric(scraped, "canary_step_index", model="digits") == 0
    controller.send_signal(signal.SIGTERM)
    assert controller.wait(timeout=20) == 143
    assert RolloutStore.open_existing(state).lease("digits") is None
    assert saved(state).history[-1].action == "stopped" and share_of(gateway) == 0.05
    before = len(saved(state).history)
    resumed = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=canary_env())
    try:
        # "resumed", whatever the new controller records right after it (its first analysis)
        wait_until(lambda: any(r.action == "resumed" for r in saved(state).history[before:]),
                   20, "the restart")  # fmt: skip
        assert share_of(gateway) == 0.05
    finally:
        resumed.send_signal(signal.SIGTERM)
        assert resumed.wait(timeout=20) == 143


def test_metrics_bound_to_loopback_are_not_reachable_from_another_address(
    tmp_path: Path,
) -> None:
    """The default stays 127.0.0.1 (a laptop); the manifests pass --metrics-host 0.0.0.0."""
    port = free_port()
    policy = write_policy(tmp_path)
    command = [str(BIN / "distill-canary"), "run", "--gateway", "http://127.0.0.1:9",
               "--model", "digits", "--policy", str(policy), "--state", str(tmp_path / "s.db"),
               "--metrics-port", str(port)]  # fmt: skip
    controller = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=canary_env())
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/metrics"), 30, "the metrics port")
        assert not _answers(f"http://127.0.0.2:{port}/metrics")
    finally:
        controller.send_signal(signal.SIGTERM)
        controller.wait(timeout=20)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_promote_full_goes_straight_to_100(start_gateway: StartGateway, tmp_path: Path) -> None:
    gateway = start_gateway(gateway_config())
    with controller_at_first_step(gateway, tmp_path) as (controller, state):
        assert operator("promote", state, "--full").returncode == 0
        assert controller.wait(timeout=30) == 0
    assert share_of(gateway) == 1.0
    assert saved(state).phase is Phase.PROMOTED


@pytest.mark.parametrize(
    ("policy_text", "named"),
    [("steps: [5, 50]\ngates: {max_kl: 1}\n", "steps: the last step must be 100"),
     ("gates: {max_kll: 1}\n", "gates.max_kll")],
)  # fmt: skip
def test_a_bad_policy_file_stops_the_cli_with_the_key_named(
    tmp_path: Path, policy_text: str, named: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    result = run_canary(
        [str(BIN / "distill-canary"), "run", "--gateway", "http://127.0.0.1:9",
         "--policy", str(policy), "--state", str(tmp_path / "s.db")]
    )  # fmt: skip
    assert result.returncode == 2
    assert named in result.stderr and "Traceback" not in result.stderr


def test_a_gateway_restarted_mid_step_is_set_again(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    """A restarted replica comes back at its config's share (0): the controller sees the drift,
    sets the step's share again and restarts the step's analysis."""
    gateway = start_gateway(gateway_config())
    with controller_at_first_step(gateway, tmp_path) as (_, state):
        gateway.stop()
        # From here: the controller may set the share again before start() has seen it ready.
        restarted = time.time()
        gateway.start()  # same port, share 0 from its config
        # The gateway takes the share inside the tick; the tick's record is saved at its end.
        wait_until(lambda: any(r.action == "set" and r.at > restarted for r in
                               saved(state).history), 30, "the share set again")  # fmt: skip
        assert share_of(gateway) == 0.05
        drift = next(r for r in saved(state).history if r.action == "drift")
        assert f"{gateway.url} reports share 0 (generation 0)" in drift.reason


def test_a_dark_launch_step_judges_shadow_traffic_only(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    """The production policy starts at 0 %: the student serves no one, the gates that shadow
    traffic can answer decide, and the others are skipped rather than starved."""
    gateway = start_gateway(gateway_config())
    state = tmp_path / "rollout.db"
    result = roll_out(gateway, write_policy(tmp_path, steps=[0, 25, 100]), state)
    assert result.returncode == 0, result.stdout + result.stderr
    rollout = saved(state)
    assert [r.share for r in rollout.history if r.action == "set"] == [0.0, 0.25, 1.0]
    dark = next(r for r in rollout.history if r.step_index == 0 and r.action == "advance")
    verdicts = {gate["gate"]: gate["verdict"] for gate in dark.gates}
    assert verdicts["max_error_rate"] == verdicts["max_accuracy_drop"] == "skipped"
    assert verdicts["min_agreement"] == verdicts["max_kl"] == "pass"


def test_a_step_that_stays_inconclusive_is_rolled_back(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_config())
    state = tmp_path / "rollout.db"
    policy = write_policy(tmp_path, min_requests=1_000_000, bake_seconds=1, max_step_seconds=3)
    result = roll_out(gateway, policy, state)
    assert result.returncode == 3, result.stdout + result.stderr
    assert share_of(gateway) == 0.0
    reason = saved(state).rollback_reason or ""
    assert reason.startswith("still inconclusive after") and "max_step_seconds 3" in reason


def test_the_cost_gate_judges_measured_cpu_when_the_config_says_so(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    """cost.model cpu_seconds at $3,600 a core-hour ($1 a core-second): the student's measured
    CPU makes it cost cents per 1,000 requests, over a gate of $0.001 that its wall-time price
    ($0.5 an hour) would pass; the rollout is rolled back on that gate, at the first step."""
    config = {**gateway_config(), "cost": {"model": "cpu_seconds", "price_per_core_hour": 3600}}
    gateway = start_gateway(config)
    policy = write_policy(tmp_path, gates={**FAST_POLICY["gates"], "max_cost_per_1k": 0.001})
    state = tmp_path / "rollout.db"
    result = roll_out(gateway, policy, state)
    assert result.returncode == 3, result.stdout + result.stderr
    rollout = saved(state)
    assert "max_cost_per_1k" in rollout.rollback_reason
    cost = next(g for g in rollout.last_analysis if g["gate"] == "max_cost_per_1k")
    assert cost["verdict"] == "fail" and cost["value"] > 0.001
    text = gateway.metrics_text()
    cpu = read_metric(text, "gateway_backend_cpu_seconds_total", backend="student", path="live")
    dollars = read_metric(text, "gateway_inference_cost_dollars_total", backend="student",
                          basis="cpu_seconds")  # fmt: skip
    assert dollars == pytest.approx(cpu * 3600 / 3600, rel=1e-6)  # $1 per measured CPU second
    pooled = next(r.observations["rollout"] for r in reversed(rollout.history)
                  if "rollout" in r.observations)  # fmt: skip
    cpu_ms = {b: pooled[b]["cpu_ms_per_request"] for b in ("teacher", "student")}
    assert cpu_ms["teacher"] > cpu_ms["student"] > 0, cpu_ms
