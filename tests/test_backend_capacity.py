"""What a stuck model call holds: the real ONNX Runtime backend, its session wrapped so that a call
blocks until the test lets it return (a fault a real model cannot be made to produce on cue)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from gateway.backends.onnx import OnnxBackend
from gateway.config import OnnxBackendConfig
from gateway.errors import BackendUnavailable
from models import STUDENT_PATH
from tests.fake_backend import in_process_gateway

PIXELS = {"pixels": np.ones((1, 64), np.float32)}
STUCK = {"pixels": np.full((1, 64), -1.0, np.float32)}  # the wrapper holds calls with these


class _HeldSession:
    """Runs the real session, except that calls with STUCK inputs wait for ``release``."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.release = threading.Event()
        self.held = 0

    def run(self, names: Sequence[str], inputs: Mapping[str, np.ndarray]) -> Any:
        if float(inputs["pixels"][0, 0]) == -1.0:
            self.held += 1
            self.release.wait(10)
        return self._session.run(names, inputs)


@asynccontextmanager
async def _held_backend(max_concurrency: int) -> AsyncIterator[tuple[OnnxBackend, _HeldSession]]:
    """The real student backend, its session wrapped; every held call is let go at the end. Its
    live calls all go to its threads: a call run inline (see the next test) cannot be held."""
    config = OnnxBackendConfig(path=STUDENT_PATH, max_concurrency=max_concurrency,
                               inline_below_us=0)  # fmt: skip
    backend = OnnxBackend("student", config)
    await backend.load()
    held = _HeldSession(backend._session)
    backend._session = held
    try:
        yield backend, held
    finally:
        held.release.set()
        await backend.close()


async def _until(condition: Any, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_shadow_calls_never_take_live_threads() -> None:
    async def main() -> None:
        async with _held_backend(max_concurrency=1) as (backend, held):
            shadow = asyncio.create_task(backend.infer(STUCK, ["logits"], lane="shadow"))
            await _until(lambda: held.held == 1)
            live = await asyncio.wait_for(backend.infer(PIXELS, ["logits"]), 2.0)
            assert live["logits"].shape == (1, 10)  # answered while the shadow call is stuck
            held.release.set()
            await shadow

    asyncio.run(main())


def test_timed_out_calls_are_counted_and_a_lane_full_of_them_refuses_at_once() -> None:
    async def main() -> None:
        async with _held_backend(max_concurrency=2) as (backend, held):
            for _ in range(2):
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(backend.infer(STUCK, ["logits"]), 0.05)
            assert backend.abandoned_in("live") == 2 and backend.abandoned_total == 2
            with pytest.raises(BackendUnavailable, match="all 2 live threads still run calls"):
                await asyncio.wait_for(backend.infer(PIXELS, ["logits"]), 1.0)  # not queued
            assert (await backend.infer(PIXELS, ["logits"], lane="shadow"))["logits"].size == 10
            held.release.set()
            await _until(lambda: backend.abandoned_in("live") == 0)
            assert (await backend.infer(PIXELS, ["logits"]))["logits"].shape == (1, 10)
            assert backend.abandoned_total == 2  # a count of what happened, not of what is

    asyncio.run(main())


def test_a_student_stuck_in_abandoned_calls_opens_its_circuit_and_the_teacher_answers() -> None:
    """Through the service: no client waits behind the stuck threads, and the metrics say why."""

    async def main() -> None:
        async with (
            _held_backend(max_concurrency=1) as (student, _),
            in_process_gateway(
                serving_student=student,
                student={"path": STUDENT_PATH, "timeout_ms": 50},
                resilience={"failure_threshold": 3},
            ) as gateway,
        ):
            body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                                "data": [-1.0] * 64}]}  # fmt: skip
            for _ in range(4):
                answer = await gateway.client.post(
                    "/v2/models/digits/infer", json=body, headers={"x-canary": "student"}
                )
                assert answer.status_code == 200
                assert answer.headers["x-served-by"] == "teacher"
            states = gateway.registry.get_sample_value(
                "gateway_circuit_state",
                {"model": "digits", "backend": "student", "state": "open"},
            )
            assert states == 1.0
            running = gateway.metric("gateway_backend_abandoned_calls_running",
                                     backend="student", lane="live")  # fmt: skip
            assert running == 1.0
            assert gateway.metric("gateway_backend_abandoned_calls_total",
                                  backend="student") == 1.0  # fmt: skip

    asyncio.run(main())


class _SlowingSession:
    """The real session, slowed by ``delay`` seconds per call when asked; records its threads."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.delay = 0.0
        self.threads: list[int] = []

    def run(self, names: Sequence[str], inputs: Mapping[str, np.ndarray]) -> Any:
        self.threads.append(threading.get_ident())
        if self.delay:
            time.sleep(self.delay)
        return self._session.run(names, inputs)


def test_a_tiny_model_runs_on_the_event_loop_until_its_calls_grow_slow() -> None:
    from models import TEACHER_PATH

    async def main() -> None:
        loop_thread = threading.get_ident()
        # 500 us, not the default 100: a loaded CI machine must not push a 10 us call over it
        student = OnnxBackend("student", OnnxBackendConfig(path=STUDENT_PATH, inline_below_us=500))
        teacher = OnnxBackend("teacher", OnnxBackendConfig(path=TEACHER_PATH))
        for backend in (student, teacher):
            await backend.load()
        watched = _SlowingSession(student._session)
        student._session = watched
        try:
            for _ in range(20):
                await student.infer(PIXELS, ["logits"])
                await teacher.infer(PIXELS, ["logits"])
            assert student.inline_calls == 20 and set(watched.threads) == {loop_thread}
            assert teacher.inline_calls == 0  # about 0.2 ms a row: worth the hop
            await student.infer(PIXELS, ["logits"], lane="shadow")
            assert watched.threads[-1] != loop_thread  # shadow calls never run on the loop
            watched.delay = 0.002  # the machine got busy: 2 ms a call
            for _ in range(40):
                await student.infer(PIXELS, ["logits"])
            assert watched.threads[-1] != loop_thread  # back on the backend's threads
            # the moving average passes 500 us on the third 2 ms call: three inline at most
            assert student.inline_calls <= 23
        finally:
            for backend in (student, teacher):
                await backend.close()

    asyncio.run(main())
