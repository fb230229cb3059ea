"""Shadow traffic: a sample of live requests is run on the other backend in the background, and the
two answers are compared (top-1 agreement, KL divergence), without ever delaying the client.

Shadow calls have their own lane in each backend (threads apart from live traffic's), their own
timeout, and they skip a backend whose circuit is not closed: live traffic has a failing backend
to itself, and only live calls decide when its circuit closes again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gateway.backends import Backend
from gateway.config import ShadowConfig
from gateway.errors import BackendTimeout, GatewayError
from gateway.metrics import GatewayMetrics
from gateway.resilience import CircuitBreaker, CircuitState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comparison:
    examples: int
    agreements: int
    kl_per_example: np.ndarray


def compare_logits(teacher_logits: np.ndarray, student_logits: np.ndarray) -> Comparison:
    """Row-wise top-1 agreement and KL(softmax(teacher) || softmax(student)) in nats."""
    teacher_log_p = _log_softmax(teacher_logits.astype(np.float64))
    student_log_p = _log_softmax(student_logits.astype(np.float64))
    kl = (np.exp(teacher_log_p) * (teacher_log_p - student_log_p)).sum(axis=1)
    agreements = int((teacher_logits.argmax(axis=1) == student_logits.argmax(axis=1)).sum())
    return Comparison(len(teacher_logits), agreements, np.maximum(kl, 0.0))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


@dataclass(frozen=True)
class _Job:
    served_by: str
    request_id: str
    inputs: Mapping[str, np.ndarray]
    live_logits: np.ndarray


class ShadowComparer:
    def __init__(
        self,
        backends: Mapping[str, Backend],
        breakers: Mapping[str, CircuitBreaker],
        metrics: GatewayMetrics,
        logits_name: str,
        config: ShadowConfig,
        rng: random.Random | None = None,
        on_answer: Callable[[str, np.ndarray], object] | None = None,
    ) -> None:
        """``on_answer(request_id, classes)`` hears the shadow backend's top-1 classes for each
        compared request (the feedback store keeps them, so a label scores both backends)."""
        self._backends = backends
        self._breakers = breakers
        self._metrics = metrics
        self._logits_name = logits_name
        self._sample_rate = config.sample_rate
        self._timeout = config.timeout_ms / 1000.0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=config.queue_size)
        self._worker_count = config.workers
        self._workers: list[asyncio.Task[None]] = []
        self._rng = rng or random.Random()
        self._on_answer = on_answer

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
        if self._sample_rate <= 0 or self._rng.random() >= self._sample_rate:
            return
        try:
            self._queue.put_nowait(_Job(served_by, request_id, inputs, outputs[self._logits_name]))
        except asyncio.QueueFull:
            self._metrics.shadow_dropped.labels(self._metrics.model, "queue_full").inc()

    async def drain(self) -> None:
        """Waits until every queued comparison is done (for tests and graceful shutdown)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._compare(job)
            except GatewayError as exc:
                log.warning("shadow comparison failed: %s", exc.message)
            except Exception:  # a bug here must not kill the worker
                log.exception("shadow comparison failed")
            finally:
                self._queue.task_done()

    async def _compare(self, job: _Job) -> None:
        shadow_role = "student" if job.served_by == "teacher" else "teacher"
        if self._breakers[shadow_role].state is not CircuitState.CLOSED:
            self._metrics.shadow_dropped.labels(self._metrics.model, "circuit_open").inc()
            return
        backend = self._backends[shadow_role]
        try:
            with self._metrics.backend_call(shadow_role, "shadow"):
                outputs = await asyncio.wait_for(
                    backend.infer(job.inputs, [self._logits_name], lane="shadow"), self._timeout
                )
        except TimeoutError as exc:
            self._metrics.shadow_errors.labels(self._metrics.model, shadow_role).inc()
            raise BackendTimeout(
                f"{shadow_role} did not answer within {self._timeout * 1000:.0f} ms"
            ) from exc
        except GatewayError:
            self._metrics.shadow_errors.labels(self._metrics.model, shadow_role).inc()
            raise
        shadow_logits = outputs[self._logits_name]
        if job.served_by == "teacher":
            result = compare_logits(job.live_logits, shadow_logits)
        else:
            result = compare_logits(shadow_logits, job.live_logits)
        model = self._metrics.model
        self._metrics.shadow_comparisons.labels(model).inc(result.examples)
        self._metrics.shadow_agreements.labels(model).inc(result.agreements)
        histogram = self._metrics.shadow_kl.labels(model)
        for kl in result.kl_per_example.tolist():
            histogram.observe(kl)
        if self._on_answer is not None:
            self._on_answer(job.request_id, shadow_logits.argmax(axis=-1))
