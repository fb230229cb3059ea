"""What a stuck model call holds: the real ONNX Runtime backend, its session wrapped so that a call
blocks until the test lets it return (a fault a real model cannot be made to produce on cue)."""

from __future__ import annotations

import asyncio
import threading
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
    """The real session, on a clock of the test's: each call takes ``cost`` seconds of that clock
    (so what the backend learns never depends on this machine's speed); records its threads."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.cost = 10e-6  # a distilled student's row
        self.now = 0.0
        self.threads: list[int] = []

    def clock(self) -> float:
        return self.now

    def run(self, names: Sequence[str], inputs: Mapping[str, np.ndarray]) -> Any:
        self.threads.append(threading.get_ident())
        self.now += self.cost
        return self._session.run(names, inputs)


def test_a_tiny_model_runs_on_the_event_loop_until_its_calls_grow_slow() -> None:
    from models import TEACHER_PATH

    async def main() -> None:
        loop_thread = threading.get_ident()
        student = OnnxBackend("student", OnnxBackendConfig(path=STUDENT_PATH))
        teacher = OnnxBackend("teacher", OnnxBackendConfig(path=TEACHER_PATH))
        for backend in (student, teacher):
            await backend.load()
        watched = _SlowingSession(student._session)
        student._session, student.clock = watched, watched.clock
        # the teacher's file (4.5 MB) is over inline_max_file_bytes: however fast its calls
        teacher.clock = lambda: 0.0  # every call takes no time at all
        student._seconds_per_call = float("inf")  # forget the warm-up's, on the machine's clock
        try:
            await student.infer(PIXELS, ["logits"])  # on a thread; it learns the test's 10 us
            watched.threads.clear()
            for _ in range(20):
                await student.infer(PIXELS, ["logits"])
                await teacher.infer(PIXELS, ["logits"])
            assert student.inline_calls == 20 and set(watched.threads) == {loop_thread}
            assert teacher.inline_calls == 0
            big = {"pixels": np.ones((64, 64), np.float32)}
            await student.infer(big, ["logits"])
            assert watched.threads[-1] != loop_thread  # a batch of 64 rows: on the threads
            await student.infer(PIXELS, ["logits"], lane="shadow")
            assert watched.threads[-1] != loop_thread  # shadow calls never run on the loop
            watched.cost = 0.002  # the machine got busy: 2 ms a call
            for _ in range(40):
                await student.infer(PIXELS, ["logits"])
            assert watched.threads[-1] != loop_thread  # back on the backend's threads
            # 10 us + 0.1 x (2 ms - 10 us) per call passes 100 us on the first slow call, so only
            # that one ran inline
            assert student.inline_calls == 21
        finally:
            for backend in (student, teacher):
                await backend.close()

    asyncio.run(main())


def test_shadow_batches_do_not_teach_the_live_estimate() -> None:
    """Item 11 of the trust issue: a teacher's cheap-per-row shadow batches once lowered the
    estimate until a batch-1 teacher call ran on the event loop."""

    async def main() -> None:
        student = OnnxBackend("student", OnnxBackendConfig(path=STUDENT_PATH))
        await student.load()
        watched = _SlowingSession(student._session)
        student._session, student.clock = watched, watched.clock
        try:
            watched.cost = 0.001  # 1 ms a live call: too slow for the loop
            for _ in range(30):
                await student.infer(PIXELS, ["logits"])
            assert watched.threads[-1] != threading.get_ident()
            inline_so_far = student.inline_calls
            watched.cost = 1e-6  # small shadow batches (within the 8-row limit) at 1 us each
            batch = {"pixels": np.ones((4, 64), np.float32)}
            for _ in range(50):
                await student.infer(batch, ["logits"], lane="shadow")
            watched.cost = 0.001
            await student.infer(PIXELS, ["logits"])
            assert student.inline_calls == inline_so_far
            assert watched.threads[-1] != threading.get_ident()
        finally:
            await student.close()

    asyncio.run(main())
