"""Shadow traffic: a sample of live requests is run on the other backend in the background, and the
two answers are compared as the model's task says (``gateway.tasks``: top-1 agreement and KL for
a classifier, errors for a regression, cosine for an embedding...), without ever delaying the
client.

Shadow calls have their own lane in each backend (threads apart from live traffic's), their own
timeout, and they skip a backend whose circuit is not closed: live traffic has a failing backend
to itself, and only live calls decide when its circuit closes again.

Comparisons for the teacher are batched: the first waits ``shadow.max_delay_ms`` for others to
join it (up to ``shadow.max_batch_size`` rows), and they run as one call. A teacher runs 16 rows
in about 1.5x the time of one, so a 10 % shadow sample costs a fraction of what one teacher call
per sampled request would (on one core, that alone is about a fifth of the student's
throughput). Nobody waits for a comparison, except a label that arrives before its request's
shadow answer: it waits for that answer (at most the delay and the shadow timeout), so the label
still scores both backends. A batched call's time is not any request's latency, so it goes to its
own histogram, not to ``gateway_backend_duration_seconds``. The student's shadow calls are never
batched or delayed: in a dark launch they are its only latency samples.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gateway.backends import Backend
from gateway.backends.base import batch_rows
from gateway.batching import stackable
from gateway.config import ShadowConfig
from gateway.errors import BackendTimeout, GatewayError
from gateway.metrics import GatewayMetrics
from gateway.resilience import CircuitBreaker, CircuitState
from gateway.tasks import KL_CAP, ClassComparison, Task, compare_logits

__all__ = ["KL_CAP", "ClassComparison", "ShadowComparer", "compare_logits"]
log = logging.getLogger(__name__)


class CascadeEvidence(Protocol):
    """What the shadow hands the cascade (``gateway.cascade.Cascade``)."""

    def served(self, teacher: np.ndarray, student: np.ndarray, lane: str) -> np.ndarray: ...

    def dropped(self, reason: str, requests: int) -> None: ...


@dataclass(frozen=True)
class _Job:
    served_by: str  # teacher, student, or escalated (a cascade request the teacher answered)
    request_id: str
    inputs: Mapping[str, np.ndarray]
    live_answer: np.ndarray  # the task's output: the serving backend's (escalated: the student's)


class ShadowComparer:
    def __init__(
        self,
        backends: Mapping[str, Backend],
        breakers: Mapping[str, CircuitBreaker],
        metrics: GatewayMetrics,
        task: Task,
        config: ShadowConfig,
        rng: random.Random | None = None,
        on_answer: Callable[[str, np.ndarray], object] | None = None,
        cascade: CascadeEvidence | None = None,
    ) -> None:
        """``on_answer(request_id, prediction)`` hears what the shadow backend predicted for
        each compared request (``Task.prediction``: the feedback store keeps it, so a label
        scores both backends); never for a task that takes no labels. ``cascade``
        (``traffic.mode: cascade``) takes each request's rows of both answers as evidence and
        gives what the cascade answers, which is then compared with the teacher's in the
        student's place; it hears of every job whose shadow call did not answer. An escalated
        request (``served_by`` "escalated", the student's answer as its live answer) is shadowed
        on the teacher like a sure one, so that both are dropped alike."""
        self._backends = backends
        self._breakers = breakers
        self._metrics = metrics
        self._task = task
        self.sample_rate = config.sample_rate  # PUT /admin/models/{model}/shadow moves it
        self._max_batch_rows = config.max_batch_size
        self._delay = config.max_delay_ms / 1000.0
        self._pending: dict[str, asyncio.Future[None]] = {}  # request id -> its comparison done
        self._timeout = config.timeout_ms / 1000.0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=config.queue_size)
        self._worker_count = config.workers
        self._workers: list[asyncio.Task[None]] = []
        self._rng = rng or random.Random()
        self._on_answer = on_answer
        self._cascade = cascade

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"shadow-{n}") for n in range(self._worker_count)
        ]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def maybe_submit(
        self,
        served_by: str,
        request_id: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Called on the request path: O(1), never waits."""
        if self.sample_rate <= 0 or self._rng.random() >= self.sample_rate:
            return
        try:
            self._queue.put_nowait(_Job(served_by, request_id, inputs, outputs[self._task.output]))
        except asyncio.QueueFull:
            self._metrics.shadow_dropped.labels(self._metrics.model, "queue_full").inc()
            self._evidence_dropped("queue_full", 1)
            return
        if request_id not in self._pending:
            self._pending[request_id] = asyncio.get_running_loop().create_future()

    async def answered(self, request_id: str) -> None:
        """Returns once ``request_id``'s shadow comparison (if one is queued or running) is done,
        so that its label finds the shadow answer beside the prediction; bounded by the delay
        and the shadow timeout."""
        done = self._pending.get(request_id)
        if done is not None:
            await asyncio.wait([done], timeout=self._delay + self._timeout)

    async def drain(self) -> None:
        """Waits until every queued comparison is done (for tests and graceful shutdown)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            taken = [await self._queue.get()]
            try:
                if self._delay > 0 and self._batches_for(taken[0]):
                    await asyncio.sleep(self._delay)  # for others to join it
                taken += self._queued_now()
                for batch in _batches(taken, self._max_batch_rows):
                    await self._compare_guarded(batch)
            finally:
                for job in taken:
                    self._queue.task_done()
                    done = self._pending.pop(job.request_id, None)
                    if done is not None and not done.done():
                        done.set_result(None)

    def _batches_for(self, job: _Job) -> bool:
        return self._max_batch_rows > 1 and _shadow_role(job) == "teacher"

    def _queued_now(self) -> list[_Job]:
        """What else waits in the queue right now, without waiting for more."""
        jobs: list[_Job] = []
        while not self._queue.empty() and len(jobs) < self._max_batch_rows:
            jobs.append(self._queue.get_nowait())
        return jobs

    async def _compare_guarded(self, batch: list[_Job]) -> None:
        try:
            await self._compare(batch)
        except GatewayError as exc:
            log.warning("shadow comparison failed: %s", exc.message)
        except Exception:  # a bug here must not kill the worker
            log.exception("shadow comparison failed")

    async def _compare(self, batch: list[_Job]) -> None:
        """One shadow call for ``batch`` (jobs of one shadow role, stackable), then each job's
        comparison against its own rows of the answer."""
        shadow_role = _shadow_role(batch[0])
        model = self._metrics.model
        if self._breakers[shadow_role].state is not CircuitState.CLOSED:
            self._metrics.shadow_dropped.labels(model, "circuit_open").inc(len(batch))
            self._evidence_dropped("circuit_open", len(batch))
            return
        backend = self._backends[shadow_role]
        inputs = batch[0].inputs if len(batch) == 1 else {
            name: np.concatenate([job.inputs[name] for job in batch]) for name in batch[0].inputs
        }  # fmt: skip
        started = time.perf_counter()
        try:
            call = backend.infer(inputs, [self._task.output], lane="shadow")
            if len(batch) == 1:
                with self._metrics.shadow_call(shadow_role):
                    async with asyncio.timeout(self._timeout):
                        outputs = await call
            else:
                async with asyncio.timeout(self._timeout):
                    outputs = await call
                self._metrics.shadow_batch_duration.labels(model, shadow_role).observe(
                    time.perf_counter() - started)  # fmt: skip
                self._metrics.shadow_batch_size.labels(model, shadow_role).observe(
                    batch_rows(inputs))  # fmt: skip
        except TimeoutError as exc:
            self._metrics.shadow_errors.labels(model, shadow_role).inc(len(batch))
            self._evidence_dropped("timeout", len(batch))
            raise BackendTimeout(
                f"{shadow_role} did not answer within {self._timeout * 1000:.0f} ms"
            ) from exc
        except GatewayError:
            self._metrics.shadow_errors.labels(model, shadow_role).inc(len(batch))
            self._evidence_dropped("error", len(batch))
            raise
        self._record(batch, outputs[self._task.output])

    def _evidence_dropped(self, reason: str, requests: int) -> None:
        if self._cascade is not None:
            self._cascade.dropped(reason, requests)

    def _record(self, batch: list[_Job], shadow_answer: np.ndarray) -> None:
        """The batch compared in one go (its jobs served by one backend), then each job's own
        rows of the shadow answer handed on."""
        live_answer = (batch[0].live_answer if len(batch) == 1
                       else np.concatenate([job.live_answer for job in batch]))  # fmt: skip
        task = self._task
        by_student = batch[0].served_by != "teacher"
        teacher, student = shadow_answer, live_answer
        if not by_student:
            teacher, student = student, teacher
        if self._cascade is not None:
            served, jobs = self._cascade.served, zip(batch, _rows_of(batch), strict=True)
            student = np.concatenate([served(teacher[rows], student[rows], job.served_by)
                                      for job, rows in jobs])  # fmt: skip
        task.record(task.compare(teacher, student))
        if self._on_answer is None:
            return
        predicted, offset = task.prediction(shadow_answer), 0
        if predicted is None:
            return
        for job in batch:
            rows = len(job.live_answer)
            if job.served_by != "escalated":  # paired already, with the student's answer
                self._on_answer(job.request_id, predicted[offset : offset + rows])
            offset += rows


def _rows_of(batch: list[_Job]) -> list[slice]:
    """Each job's rows in the batch's stacked answers."""
    slices, offset = [], 0
    for job in batch:
        slices.append(slice(offset, offset + len(job.live_answer)))
        offset += len(job.live_answer)
    return slices


def _shadow_role(job: _Job) -> str:
    return "student" if job.served_by == "teacher" else "teacher"


def _batches(jobs: list[_Job], max_rows: int) -> list[list[_Job]]:
    """Teacher-shadow jobs with stackable inputs grouped into calls of at most ``max_rows``
    rows, in arrival order; every other job alone."""
    batches: list[list[_Job]] = []
    open_batch: list[_Job] = []
    rows = 0
    for job in jobs:
        job_rows = batch_rows(job.inputs)
        fits = (open_batch and rows + job_rows <= max_rows
                and stackable(open_batch[0].inputs, job.inputs))  # fmt: skip
        if _shadow_role(job) != "teacher" or max_rows <= 1:
            batches.append([job])
        elif fits:
            open_batch.append(job)
            rows += job_rows
        else:
            if open_batch:
                batches.append(open_batch)
            open_batch, rows = [job], job_rows
    if open_batch:
        batches.append(open_batch)
    return batches
