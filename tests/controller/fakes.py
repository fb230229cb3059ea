"""Small fakes at the controller's seams: a fleet of gateways and a metrics source, in memory;
and the bad state files an operator may point the CLI at.

The fleet fakes only the HTTP calls (``_put``/``_get``), so the real verification logic runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from controller.actuator import GatewayFleet
from controller.analysis import BackendWindow, WindowMetrics
from controller.exporter import ControllerMetrics
from controller.policy import Policy
from controller.promtext import Snapshot
from controller.rollout import CanaryController
from controller.rollout_store import DecisionRecord, RolloutState, RolloutStore
from controller.sources import Mark, MetricsSource
from gateway.protocol import TrafficState


class FakeFleet(GatewayFleet):
    def __init__(self, urls: list[str], model: str = "digits") -> None:
        super().__init__(urls, "token", httpx.Client(), model)
        self.traffic = {url: TrafficState(student_share=0.0, generation=0) for url in urls}
        self.down: set[str] = set()
        self.puts: list[tuple[str, float]] = []  # by the controller, in order

    def _put(self, url: str, share: float) -> TrafficState:
        self.puts.append((url, share))
        return self.operator_put(url, share)

    def operator_put(self, url: str, share: float) -> TrafficState:
        """A PUT of the model's traffic, as anyone with the token could send behind the
        controller."""
        if url in self.down:
            raise httpx.ConnectError("connection refused")
        before = self.traffic[url]
        self.traffic[url] = before.model_copy(
            update={"student_share": share, "generation": before.generation + 1}
        )
        return self.traffic[url]

    def _get(self, url: str) -> TrafficState:
        if url in self.down:
            raise httpx.ConnectError("connection refused")
        return self.traffic[url]

    def _put_student(self, url: str, model_id: str) -> TrafficState:
        if url in self.down:
            raise httpx.ConnectError("connection refused")
        self.traffic[url] = self.traffic[url].model_copy(update={"student_id": model_id})
        return self.traffic[url]


def passing_window(requests: float = 1000.0) -> WindowMetrics:
    """A step where the student plainly agrees with the teacher."""
    return WindowMetrics(
        teacher=BackendWindow(requests=requests),
        student=BackendWindow(requests=requests),
        comparisons=requests,
        agreements=requests,
    )


class FakeSource(MetricsSource):
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.window = passing_window()

    def mark(self) -> Mark:
        return Mark(at=self.clock())

    def increase_since(self, mark: Mark) -> Snapshot:
        raise NotImplementedError  # window_since is answered directly

    def window_since(self, mark: Mark, model: str) -> WindowMetrics:
        return self.window


class QuietReporter:
    def __init__(self) -> None:
        self.lines: list[DecisionRecord] = []

    def decision(self, record: DecisionRecord, state: RolloutState) -> None:
        self.lines.append(record)

    def progress(self, state: RolloutState, now: float) -> None:
        pass

    def close(self) -> None:
        pass


class Clock:
    """Time that moves only when the controller sleeps (or a test says so)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def make_controller(
    store: RolloutStore,
    fleet: FakeFleet,
    clock: Clock,
    holder: str,
    **policy: object,
) -> tuple[CanaryController, FakeSource, CollectorRegistry]:
    settings: dict[str, object] = {
        "steps": [5, 25, 100], "bake_seconds": 10, "interval_seconds": 1, "min_requests": 10,
        "max_step_seconds": 60, "gates": {"min_agreement": 0.9},
    }  # fmt: skip
    settings.update(policy)
    rollout_policy = Policy.model_validate(settings)
    source = FakeSource(clock)
    registry = CollectorRegistry()
    controller = CanaryController(
        rollout_policy, fleet, source, store, QuietReporter(),
        ControllerMetrics(registry, rollout_policy.model, ["min_agreement"]),
        clock=clock, sleep=clock.sleep, holder=holder,
    )  # fmt: skip
    return controller, source, registry


def bad_state_files(directory: Path) -> dict[str, Path]:
    """A file that is not SQLite, a directory, an empty file (mode 0644) and a missing path."""
    not_sqlite = directory / "notes.txt"
    not_sqlite.write_text("not a database\n" * 20)
    folder = directory / "dir.db"
    folder.mkdir()
    empty = directory / "empty.db"
    empty.touch()
    empty.chmod(0o644)
    return {"not sqlite": not_sqlite, "a directory": folder, "empty": empty,
            "missing": directory / "missing.db"}  # fmt: skip
