"""Rollouts driven as a user would: a real gateway's config, a real traffic generator and the
real `distill-canary` CLI in subprocesses. Shared by the rollout, observability, resilience and
stack tests."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from controller.local.traffic import TrafficGenerator, TrafficReport
from controller.rollout_store import RolloutStore
from models import STUDENT_PATH, TEACHER_PATH
from tests.servers import ADMIN_TOKEN, BIN, TestGateway, wait_until

FAST_POLICY: dict[str, Any] = {
    "steps": [5, 25, 100],
    "bake_seconds": 2,
    "interval_seconds": 0.5,
    "min_requests": 60,
    "failure_limit": 2,
    "max_step_seconds": 90,
    "gates": {
        "min_agreement": 0.9,
        "max_error_rate": 0.05,
        "max_accuracy_drop": 0.1,
        "max_kl": 1.0,
        "max_latency_ms": 250,
    },
}


def gateway_config(student: Path = STUDENT_PATH) -> dict[str, Any]:
    return {
        "shadow": {"sample_rate": 0.25},
        "teacher": {"path": str(TEACHER_PATH), "cost_per_hour": 3.0},
        "student": {"path": str(student), "cost_per_hour": 0.5},
    }


@dataclass
class Replayed:
    """What ``traffic`` sent, filled in when its block ends: a report per gateway."""

    gateways: int
    reports: list[TrafficReport] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)  # a replay that raised, as what it raised

    @property
    def answered_everywhere(self) -> bool:
        """Every gateway's replay ran to the end and got answers."""
        return (len(self.reports) == self.gateways and not self.crashed
                and all(report.samples for report in self.reports))  # fmt: skip

    @property
    def errors(self) -> list[str]:
        """Every request (or its label) a client saw fail, as what it was told."""
        failed = [str(s.error) for report in self.reports for s in report.errors]
        return failed + self.crashed


@contextmanager
def traffic(*gateways: TestGateway, model: str = "digits") -> Iterator[Replayed]:
    """Replays the test split with feedback to ``model`` of each gateway until the block ends."""
    stop = threading.Event()
    replayed = Replayed(len(gateways))

    def replay(url: str) -> None:
        try:
            replayed.reports.append(TrafficGenerator(url, model).run(stop=stop, workers=2))
        except Exception as exc:  # counted, not lost with its thread
            replayed.crashed.append(f"{url}: {exc!r}")

    threads = [threading.Thread(target=replay, args=(g.url,)) for g in gateways]
    for thread in threads:
        thread.start()
    try:
        yield replayed
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def write_policy(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({**FAST_POLICY, **overrides}))
    return path


def canary_command(
    gateways: list[TestGateway], policy: Path, state: Path, *extra: str
) -> list[str]:
    command = [str(BIN / "distill-canary"), "run", "--policy", str(policy), "--state", str(state)]
    for gateway in gateways:
        command += ["--gateway", gateway.url]
    return command + list(extra)


def canary_env() -> dict[str, str]:
    return {**os.environ, "DISTILL_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}


def run_canary(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=canary_env()
    )


def roll_out(gateway: TestGateway, policy: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """``distill-canary run`` of ``policy`` on ``gateway`` under labelled test-split traffic."""
    with traffic(gateway):
        return run_canary(canary_command([gateway], policy, state))


def operator(verb: str, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "distill-canary"), verb, "--state", str(state), *extra],
        capture_output=True, text=True, timeout=30, env=canary_env(),
    )  # fmt: skip


def share_of(gateway: TestGateway) -> float:
    return float(httpx.get(f"{gateway.url}/admin/traffic").json()["student_share"])


def saved(state: Path) -> Any:
    return RolloutStore.open_existing(state).load()


@contextmanager
def controller_at_first_step(
    gateway: TestGateway, work: Path, **policy: Any
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A `distill-canary run` that has confirmed its first step (5 %) on ``gateway``; stopped
    with SIGTERM at the end if it still runs. Yields the process and its state file."""
    state = work / "rollout.db"
    settings = {"bake_seconds": 300, "max_step_seconds": 600, **policy}
    command = canary_command([gateway], write_policy(work, **settings), state)
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, env=canary_env()) as controller:
        try:
            wait_until(lambda: share_of(gateway) == 0.05, 60, "the first step")
            yield controller, state
        finally:
            if controller.poll() is None:
                controller.send_signal(signal.SIGTERM)
                controller.wait(timeout=30)
