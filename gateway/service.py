"""The gateway's core: routes, runs, shadows, remembers predictions and measures.

It knows no wire format: it takes an ``InferRequest`` (tensors already decoded) and returns an
``InferResult`` (tensors). Each protocol is a thin codec at the edge (``gateway.app`` with
``gateway.codec`` for HTTP, ``gateway.grpc_server`` for gRPC), so routing, fallback, shadow,
feedback and metrics behave the same whichever way a request arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from gateway.backends import Backend
from gateway.batching import Batcher
from gateway.cascade import Cascade, LaneRules, carried, lane_of
from gateway.codec import DecodedRequest
from gateway.config import BackendConfig, GatewaySettings
from gateway.drift import drift_summary
from gateway.errors import (
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    DeadlineExceeded,
    GatewayError,
    InferenceFailed,
    ModelRejectedInput,
    NotFound,
    Overloaded,
)
from gateway.feedback import PredictionStore
from gateway.feedback_auth import FeedbackAuth, ticket_key
from gateway.metrics import MULTIPROCESS, GatewayMetrics
from gateway.overload import (
    BackendQueue,
    BodyBudget,
    InflightBound,
    Shed,
    backend_capacity,
    shed_for_wait,
)
from gateway.padding import Padding
from gateway.protocol import Feedback
from gateway.resilience import CircuitBreaker, CircuitState
from gateway.roles import NO_BACKEND, ROLES, Protocol, Role
from gateway.routing import TrafficSplit
from gateway.shadow import ShadowComparer
from gateway.signature import Signature, TensorSpec
from gateway.state.fleet import FleetMember, StudentHooks
from gateway.state.predictions import FleetPredictions, LocalPredictions, Predictions
from gateway.state.redis_store import RedisStore
from gateway.state.wiring import fleet_state
from gateway.student_files import served_id
from gateway.student_swap import StudentSlot
from gateway.tasks import Task, build_task

log = logging.getLogger(__name__)
SLOTS_PER_CALL = 4
"""A backend's queue lets 4 requests per call it runs at once hold a slot: the ones beyond its
threads wait in its own pool, ready the moment a thread is free. One per call left a thread idle
from its call's end until the event loop, busy with other requests, handed its slot on: at 3x
overload the teacher ran about 40 calls a second instead of thousands."""
SHADOW_FLUSH_SECONDS = 2.0
"""On shutdown, how long queued shadow comparisons may take to be done and counted."""


@dataclass(frozen=True)
class InferRequest:
    """One inference, decoded and checked against the signature by a protocol's codec."""

    inputs: Mapping[str, np.ndarray]
    output_names: Sequence[str]  # the outputs to answer with, in order
    id: str  # the client's id, or one the edge made up
    protocol: Protocol
    received_at: float  # time.perf_counter() when the request arrived (for its latency)
    decoded_at: float  # when its body was complete and decoded: its deadline counts from here
    timeout_seconds: float | None = None  # the client's own deadline, when it gave one
    routing_key: str | None = None  # x-routing-key: sticky routing
    forced: str | None = None  # x-canary: teacher or student
    role: Role | None = None  # the backend ``GatewayService.route`` chose before decoding

    @classmethod
    def of(
        cls,
        decoded: DecodedRequest,
        request_id: str,
        protocol: Protocol,
        received_at: float,
        headers: Mapping[str, str],
        transport_timeout: float | None = None,
        role: Role | None = None,
    ) -> InferRequest:
        """From a codec's decoded request and the HTTP headers (or gRPC metadata) that route it;
        ``transport_timeout`` is what is left of a deadline the transport carried (gRPC's)."""
        timeouts = [t for t in (decoded.timeout_seconds, transport_timeout) if t is not None]
        return cls(
            inputs=decoded.inputs,
            output_names=[wanted.name for wanted in decoded.outputs],
            id=request_id,
            protocol=protocol,
            received_at=received_at,
            decoded_at=time.perf_counter(),
            timeout_seconds=min(timeouts, default=None),
            routing_key=headers.get("x-routing-key"),
            forced=headers.get("x-canary"),
            role=role,
        )


@dataclass(frozen=True)
class InferResult:
    outputs: dict[str, np.ndarray]  # the requested outputs, by name, in order
    served_by: Role
    request_id: str
    ticket: str  # x-feedback-ticket: what a label for this request must carry back
    escalated: str | None = None  # x-escalated: true (the teacher's answer), failed (the student's)


@dataclass(frozen=True)
class ModelMetadata:
    """What a model is, for HTTP's and gRPC's model metadata (each maps it to its wire shape)."""

    name: str
    version: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    student_id: str | None  # which student serves (beyond the V2 fields)
    platform: str = "distill-gateway"


class GatewayService:
    def __init__(
        self,
        settings: GatewaySettings,
        backends: Mapping[str, Backend],
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,  # the circuit breakers' (tests move it)
    ) -> None:
        self.settings = settings
        self.model = settings.model
        self.version = settings.model_version
        self._backends = backends
        self._metrics = self.metrics = metrics
        self.signature: Signature = backends["teacher"].signature
        # what is compared and labelled: the task's output, never simply outputs[0]
        self.task: Task = build_task(settings.task, self.signature, metrics)
        self.drift = drift_summary(settings, self.signature, self.task.output, metrics)
        self._all_outputs = [spec.name for spec in self.signature.outputs]
        seed = settings.traffic.seed
        self.split = TrafficSplit(
            settings.traffic.student_share, random.Random(seed) if seed is not None else None
        )
        metrics.set_share(self.split.student_share, self.split.generation)
        resilience = settings.resilience
        self._deadline = resilience.request_timeout_ms / 1000.0
        self._breakers: dict[str, CircuitBreaker] = {
            role: CircuitBreaker(
                resilience.failure_threshold, resilience.window_seconds,
                resilience.cool_down_seconds, clock,
            )
            for role in ROLES
        }  # fmt: skip
        self._timeouts = {
            "teacher": settings.teacher.timeout_ms / 1000.0,
            "student": settings.student.timeout_ms / 1000.0,
        }
        metrics.watch_backends(backends, self._breakers, settings.cost)
        overload = settings.overload
        self._retry_after = overload.retry_after_seconds
        self._max_queue = overload.max_queue_ms / 1000.0
        self._batchers = {role: self._batcher(role) for role in ROLES}
        self._queues = {
            role: BackendQueue(SLOTS_PER_CALL * backend_capacity(self._config_of(role)),
                               self._retry_after,
                               metrics.queue_delay.labels(self.model, role).observe)
            for role in ROLES
        }  # fmt: skip
        self._held = InflightBound(overload.max_inflight, self._retry_after)
        self._bodies = BodyBudget(overload.max_body_bytes, self._retry_after)
        metrics.max_inflight.labels(self.model).set(overload.max_inflight)
        metrics.queue_target.labels(self.model).set(self._max_queue)
        metrics.watch(metrics.inflight.labels(self.model), lambda: self._held.inflight)
        self.draining = False  # set on SIGTERM: readiness turns false, serving goes on
        self._student_loader: asyncio.Task[None] | None = None
        self._lag_watcher: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self.student = StudentSlot(backends["student"], self.signature, served_id(settings.student),
                                   settings.registry, metrics, lambda: self.split.student_share,
                                   lambda: self.fleet)  # fmt: skip
        feedback = settings.feedback
        key = ticket_key(feedback.ticket_key, settings.admin_token)
        if key is None and settings.state.shared and not feedback.open:
            log.warning("feedback tickets are signed with a key of this replica's own: a label "
                        "that reaches another replica is refused (403); give every replica "
                        "DISTILL_GATEWAY_FEEDBACK__TICKET_KEY or the same admin token")  # fmt: skip
        self.feedback_auth = FeedbackAuth(self.model, key, feedback.token, feedback.open)
        # built before any fleet state, so a task that refuses the mode leaves no store open
        traffic = settings.traffic
        self.cascade: Cascade | None = None
        if traffic.mode == "cascade" and traffic.cascade is not None:
            self.cascade = Cascade(traffic.cascade, self.task, metrics)
        # a cascade request's lane travels in its prediction's backend (``gateway.cascade``)
        cascading = self.cascade is not None
        self._label_rules = LaneRules(self.task.labels) if cascading else self.task.labels
        self.feedback = PredictionStore(
            settings.feedback.ttl_seconds,
            settings.feedback.max_entries,
            self._label_rules,
            max_bytes=settings.feedback.max_bytes,
        )
        # In this process, or (state.url redis) in the fleet's store, shared with the replicas
        self.predictions: Predictions = LocalPredictions(self.feedback)
        self.fleet: FleetMember | None = None
        self._store: RedisStore | None = None
        if settings.state.shared:
            split = self.split
            shared = fleet_state(settings, metrics, self._label_rules,
                                 lambda: (split.student_share, split.generation),
                                 self._apply_fleet_share,
                                 StudentHooks(lambda: self.student.id,
                                              self.student.follow_fleet))  # fmt: skip
            self._store, self.fleet = shared.store, shared.member
            self.predictions = shared.predictions
        metrics.watch(metrics.feedback_pending.labels(self.model),
                      lambda: self.predictions.pending()[0])  # fmt: skip
        metrics.watch(metrics.feedback_pending_bytes.labels(self.model),
                      lambda: self.predictions.pending()[1])  # fmt: skip
        # A shadow answer joins the remembered prediction: its label then scores both backends.
        self.shadow = ShadowComparer(backends, self._breakers, metrics, self.task,
                                     settings.shadow, on_answer=self._pair,
                                     cascade=self.cascade)  # fmt: skip

    def _pair(self, request_id: str, other_classes: np.ndarray) -> None:
        self.predictions.pair(request_id, other_classes)

    # -- lifecycle ---------------------------------------------------------------------------

    async def join_fleet(self) -> None:
        """Shares the share and the predictions with the other replicas through the store."""
        assert self.fleet is not None and self._store is not None
        fleet, split = self.fleet, self.split
        await fleet.join()
        log.info("fleet %s: replica %s at %s, student share %.4g (generation %d)",
                 self._store.url_for_humans, fleet.replica_id, fleet.advertise_url or "(no URL)",
                 split.student_share, split.generation)  # fmt: skip

    def _apply_fleet_share(self, share: float, generation: int) -> None:
        previous = self.split.student_share
        self.split.apply(share, generation)
        self._metrics.set_share(share, generation)
        log.info("student share %.4g -> %.4g (fleet generation %d)", previous, share, generation)

    def start_background(self) -> None:
        if self.fleet is not None:
            self.fleet.start()
        self.shadow.start()
        self._lag_watcher = asyncio.create_task(self._watch_loop_lag(), name="loop-lag")
        if MULTIPROCESS:
            self._sampler = asyncio.create_task(self._metrics.sample_forever(), name="sampler")
        if not self.student.loaded:
            poll = getattr(self.settings.student, "ready_poll_seconds", 1.0)
            self._student_loader = asyncio.create_task(
                self.student.load_when_it_appears(poll), name="load-student"
            )

    async def _watch_loop_lag(self, interval: float = 0.1) -> None:
        loop = asyncio.get_running_loop()
        histogram = self._metrics.loop_lag.labels(self.model)
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            histogram.observe(max(0.0, loop.time() - due))

    async def close(self) -> None:
        for task in (self._lag_watcher, self._student_loader, self._sampler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            with contextlib.suppress(TimeoutError):  # the comparisons owed, within a bound
                await asyncio.wait_for(self.shadow.drain(), SHADOW_FLUSH_SECONDS)
            await self.shadow.stop()
            if self.fleet is not None and self._store is not None:
                try:
                    await self.fleet.leave()
                    if isinstance(self.predictions, FleetPredictions):
                        await self.predictions.flush()
                finally:
                    await self._store.close()
        finally:  # the backends' threads and sessions, whatever failed before
            await asyncio.gather(*(backend.close() for backend in self._backends.values()))

    def is_ready(self) -> bool:
        """Both backends must load to start; after that a failing student is ridden out with
        fallbacks, so readiness follows the teacher, which has nowhere to fall back to. A
        draining gateway is not ready: it still serves, while load balancers move away."""
        return not self.draining and self._backends["teacher"].is_ready()

    def start_draining(self) -> None:
        self.draining = True
        if self.fleet is not None:
            self.fleet.draining = True  # the controller stops waiting for it

    def check_version(self, version: str | None) -> None:
        """``version`` is None when the request names none: the spec lets the server choose."""
        if version is not None and version != self.version:
            raise NotFound(
                f"unknown version '{version}' of model '{self.model}'; "
                f"its versions are: {self.version}"
            )

    # -- inference ---------------------------------------------------------------------------

    def admit(self, protocol: Protocol) -> InflightBound:
        """Once a request's body is complete and decoded: ``with service.admit(protocol):``.
        Beyond ``overload.max_inflight`` (a memory bound) it is counted (503, and in
        gateway_shed_total) and refused with ``Shed``. Its wait for a backend is bounded by
        time, later, in ``_call``."""
        try:
            return self._held.enter()
        except Shed as exc:
            self._metrics.count_shed(exc.reason)
            self.count_rejected(503, protocol)
            raise

    def route(self, headers: Mapping[str, str], protocol: Protocol) -> Role:
        """The backend for a request whose body is in but not yet decoded: shed now (``Shed``,
        counted) when its queue would keep it past ``overload.max_queue_ms``, so a request that
        cannot be answered in time costs no decoding; the wait itself is bounded later."""
        role = self.split.choose(headers.get("x-routing-key"), headers.get("x-canary"))
        batcher = self._batchers[role]
        expected = (batcher.expected_wait() if batcher is not None
                    else self._queues[role].expected_wait())  # fmt: skip
        refusal = shed_for_wait(expected, self._max_queue, self._retry_after)
        if refusal is not None:
            self._metrics.count_shed(refusal.reason)
            self.count_rejected(503, protocol)  # no backend's answer, nor its error
            raise refusal
        return role

    def take_body(self, declared: str | None, protocol: Protocol) -> int:
        """Before reading a body: reserves its declared length (else the most a body may be)
        against ``overload.max_body_bytes`` and returns it, for ``give_body_back`` once the body
        is decoded; refused at once (``Shed``, counted) beyond it."""
        most = self.settings.max_request_bytes
        size = min(int(declared), most) if declared and declared.isdigit() else most
        try:
            self._bodies.take(size)
        except Shed as exc:
            self._metrics.count_shed(exc.reason)
            self.count_rejected(503, protocol)
            raise
        return size

    def give_body_back(self, size: int) -> None:
        self._bodies.give_back(size)

    def count_body_timeout(self, protocol: Protocol) -> None:
        self._metrics.body_timeouts.labels(self.model).inc()
        self.count_rejected(408, protocol)

    async def infer(self, request: InferRequest) -> InferResult:
        """Routes, runs (falling back to the teacher), shadows and remembers one request; every
        request is counted once, with its status and protocol."""
        served_by: str = NO_BACKEND
        try:
            served_by = request.role or self.split.choose(request.routing_key, request.forced)
            client = request.timeout_seconds
            deadline = request.decoded_at + min(self._deadline, 1e9 if client is None else client)
            lane, unsure = None, None  # the cascade's lane (ESCALATED), the unreturned answer
            if self.cascade is not None and served_by == "student":
                served_by, outputs, unsure, lane = await self._through_cascade(request, deadline)
            else:
                served_by, outputs = await self._run(served_by, request.inputs, deadline)
            role = served_by
            if self.drift is not None:  # kept, binned in bulk: 2-8 us (README: Drift summaries)
                # the student's answer whenever it gave one (escalated too): what the watch
                # reads must not move with the cascade's threshold
                student = unsure if unsure is not None else outputs
                self.drift.observe(request.inputs, student, unsure is not None or role == "student")
            if lane == "true" and unsure is not None:  # shadowed on the teacher like a sure
                # one (its teacher answer known): a dropped shadow call drops both alike
                self.shadow.maybe_submit("escalated", request.id, request.inputs, unsure)
            else:
                self.shadow.maybe_submit(role, request.id, request.inputs, outputs)
            predicted = self.task.prediction(outputs[self.task.output])
            if predicted is not None:  # an embedding's answers take no labels
                # with its lane, so a label posted to any replica of a fleet counts for the
                # cascade (a reused id's later prediction, lane or none, replaces the earlier)
                await self.predictions.remember(request.id, carried(role, lane), predicted,
                                                deadline=deadline)  # fmt: skip
                if unsure is not None:  # its label scores the student's answer too, paired
                    self._escalated_pair(request.id, unsure)
        except GatewayError as exc:
            if isinstance(exc, Shed):
                self._metrics.count_shed(exc.reason)
            # A shed request and one its own deadline ended are no backend's answer or error:
            # counted with no backend, so the error-rate gate and alert never see them.
            unjudged = isinstance(exc, Overloaded | DeadlineExceeded)
            self._count(NO_BACKEND if unjudged else exc.backend or served_by, exc.status_code,
                        request)  # fmt: skip
            raise
        except Exception as exc:  # a bug: counted, logged with its traceback, answered as JSON
            log.exception("internal error while serving request %s", request.id)
            self._count(served_by, 500, request)
            raise InferenceFailed(f"internal error while serving request {request.id}; it is in "
                                  "the gateway's log with its traceback") from exc  # fmt: skip
        # A cascade request counts as the student's lane (what the controller's share moves and
        # its gates judge: the cascade's latency includes its escalations); x-served-by and the
        # labels say whose answer it was. One the student failed fell back (lane None): the
        # teacher's, as in split mode, so a failing student reads 100 % errors, not half.
        self._count("student" if lane is not None else role, 200, request, lane)
        wanted = {name: outputs[name] for name in request.output_names}
        return InferResult(wanted, role, request.id, self.feedback_auth.ticket(request.id),
                           None if lane in (None, "false") else lane)  # fmt: skip

    def _count(self, backend: str, code: int, request: InferRequest,
               lane: str | None = None) -> None:  # fmt: skip
        seconds = time.perf_counter() - request.received_at
        self._metrics.count_request(backend, code, seconds, request.protocol)
        if lane is not None and self.cascade is not None:
            self.cascade.count(lane, seconds)

    async def _through_cascade(
        self, request: InferRequest, deadline: float
    ) -> tuple[Role, dict[str, np.ndarray], dict[str, np.ndarray] | None, str | None]:
        """The student first; the teacher when the student is unsure (escalated: the student's
        outputs come back third, else None), and the lane: "false", "true", "failed" (the
        teacher failed on the escalation: the student's answer, which the client would rather
        have than a 503/504), or None: a student that failed fell back to the teacher already,
        a fallback, not a cascade answer. A teacher refusing the input (400) is still a 400.

        Each escalation's teacher call is counted (``Cascade.escalation_call``): a failed one
        is the teacher's failure (its breaker has it already, and the teacher's error rate
        reads the count) but not a second count of the request, which is the lane's 200."""
        cascade = self.cascade
        assert cascade is not None
        role, outputs = await self._run("student", request.inputs, deadline)
        if role != "student":
            return role, outputs, None, None
        if not cascade.escalates(cascade.confidence(outputs[self.task.output])):
            return role, outputs, None, "false"
        try:
            _, answer = await self._run("teacher", request.inputs, deadline)
        except (BackendUnavailable, Overloaded, DeadlineExceeded) as exc:
            cascade.escalation_call(_why_the_teacher_failed(exc))
            return role, outputs, None, "failed"
        cascade.escalation_call("ok")
        return "teacher", answer, outputs, "true"

    def _escalated_pair(self, request_id: str, student: Mapping[str, np.ndarray]) -> None:
        """An escalated request's student answer, which was not returned, paired with the
        teacher's for its label (its evidence comes from its shadow call, as a sure one's)."""
        predicted = self.task.prediction(student[self.task.output])
        if predicted is not None:
            self.predictions.pair(request_id, predicted)

    async def _run(
        self, role: Role, inputs: Mapping[str, np.ndarray], deadline: float
    ) -> tuple[Role, dict[str, np.ndarray]]:
        """Runs the request on ``role``; a failing student falls back to the teacher, within the
        request's deadline, so the client still gets an answer."""
        if role == "student" and not self.student.loaded:
            self._metrics.count_fallback("student", "teacher", "not_loaded")
            role = "teacher"
        elif role == "student" and not self._breakers["student"].allow():
            self._metrics.count_fallback("student", "teacher", "circuit_open")
            role = "teacher"
        breaker = self._breakers[role]
        try:
            if role == "teacher" and not breaker.allow():
                raise BackendUnavailable("circuit open after repeated failures")
            probing = breaker.state is CircuitState.HALF_OPEN  # this request holds the probe
            try:
                return role, await self._call(role, inputs, deadline)
            except BaseException:
                if probing:  # a shed, a deadline or a client gone before any verdict: let the
                    breaker.release_probe()  # next request probe (settled calls: no change)
                raise
        except ModelRejectedInput:
            if role == "teacher":
                raise
            try:  # the teacher may take what the student cannot
                answered = await self._run("teacher", inputs, deadline)
            except ModelRejectedInput as refused:  # neither takes it: the input's fault alone,
                refused.backend = "teacher"  # so not the student's error, nor a fallback
                raise
            self._metrics.count_fallback("student", "teacher", "error")
            return answered
        except (BadRequest, Overloaded, DeadlineExceeded):  # the request's: no fallback
            raise
        except GatewayError as exc:
            if role == "teacher":
                failed = BackendUnavailable(f"teacher backend unavailable: {exc.message}")
                failed.backend = "teacher"  # after a fallback too: counted once, as the teacher's
                raise failed from exc
            reason = "timeout" if isinstance(exc, BackendTimeout) else "error"
            self._metrics.count_fallback("student", "teacher", reason)
            return await self._run("teacher", inputs, deadline)

    def _config_of(self, role: Role) -> BackendConfig:
        return self.settings.teacher if role == "teacher" else self.settings.student

    def _batcher(self, role: Role) -> Batcher | None:
        """The role's dynamic batcher when its config asks for one: each batch is one backend
        call, so its breaker outcome and its cost are recorded once, not once per request."""
        config = self._config_of(role)
        batching = config.batching
        if batching is None:
            return None
        backend, observed = self._backends[role], self._metrics.batch_size.labels(self.model, role)

        def run(inputs: Mapping[str, np.ndarray]) -> Awaitable[dict[str, np.ndarray]]:
            return self._backend_call(role, backend.infer(inputs, self._all_outputs),
                                      self._timeouts[role])  # fmt: skip

        padding = None
        if batching.pad:
            pad_values = {name: c.pad_value for name, c in self.settings.inputs.items()}
            links = {name: c.padded_axes for name, c in self.settings.outputs.items()
                     if c.padded_axes is not None}  # fmt: skip
            try:
                padding = Padding(self.signature, pad_values, batching.length_buckets, links)
            except ValueError as exc:  # a start-up error naming the key to set
                raise BackendUnavailable(f"{role}: {exc}") from exc
        added = self._metrics.padding_elements.labels(self.model, role)
        elements = self._metrics.padded_call_elements.labels(self.model, role)

        def observe_padding(padding_elements: int, call_elements: int) -> None:
            added.inc(padding_elements)
            elements.inc(call_elements)

        return Batcher(run, batching.max_batch_size, batching.max_delay_us / 1e6,
                       observe=observed.observe, max_in_flight=backend_capacity(config),
                       retry_after_seconds=self._retry_after,
                       observe_wait=self._metrics.queue_delay.labels(self.model, role).observe,
                       padding=padding, observe_padding=observe_padding,
                       )  # fmt: skip

    async def _call(
        self, role: Role, inputs: Mapping[str, np.ndarray], deadline: float
    ) -> dict[str, np.ndarray]:
        """One live call: inline for a tiny model; else after waiting for the backend at most
        ``overload.max_queue_ms`` (or what is left of the deadline), then bounded by the
        backend's timeout and the deadline. Time spent before the call is never the backend's
        failure: a request that runs out of it is shed."""
        batcher = self._batchers[role]
        if batcher is None:
            outputs = self._inline(role, inputs)
            if outputs is not None:
                return outputs
        left = deadline - time.perf_counter()
        budget = min(self._max_queue, left)
        refusal = shed_for_wait(0.0, budget, self._retry_after)
        if refusal is not None:  # its deadline passed before it could wait at all
            raise refusal
        if batcher is not None:  # the batch's own call is timed, and judged, in its run
            return await batcher.infer(inputs, budget, left)
        queue = self._queues[role]
        await queue.acquire(budget)
        started, completed = time.perf_counter(), False
        try:
            left = deadline - started
            refusal = shed_for_wait(0.0, left, self._retry_after)
            if refusal is not None:
                raise refusal
            call = self._backends[role].infer(inputs, self._all_outputs)
            outputs = await self._backend_call(role, call, self._timeouts[role], left)
            completed = True
            return outputs
        finally:  # the queue learns the call time from calls that answered, not from sheds
            queue.release(time.perf_counter() - started if completed else None)

    def _inline(self, role: Role, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The call on the event loop when the backend runs this model inline, else None."""
        started = time.perf_counter()
        try:
            outputs = self._backends[role].run_inline(inputs, self._all_outputs)
        except BadRequest:
            self._breakers[role].record_success()
            raise
        except GatewayError:
            self._breakers[role].record_failure()
            raise
        if outputs is not None:
            self._metrics.observe_live_call(role, time.perf_counter() - started)
            self._breakers[role].record_success()
        return outputs

    async def _backend_call(
        self, role: Role, call: Awaitable[dict[str, np.ndarray]], timeout: float,
        left: float = math.inf,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """One backend call (one request's, or one batch's), bounded by the backend's
        ``timeout`` and what is ``left`` of the request's deadline: its outcome feeds the
        backend's circuit breaker (never when the request's own deadline ended it), its time the
        live latency and the cost."""
        breaker = self._breakers[role]
        started = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for: the call runs in this task, with no task of its own
            # to create and schedule
            async with asyncio.timeout(min(timeout, left)):
                outputs = await call
        except TimeoutError as exc:
            if left < timeout:  # the client's deadline, not the backend's timeout
                breaker.release_probe()
                raise DeadlineExceeded(f"the request's deadline passed while the {role} "
                                       f"backend ran ({left * 1000:.0f} ms)") from exc  # fmt: skip
            breaker.record_failure()
            raise BackendTimeout(
                f"{role} backend did not answer within {timeout * 1000:.0f} ms"
            ) from exc
        except BadRequest:
            breaker.record_success()  # it answered: the request was wrong, not the backend
            raise
        except GatewayError:
            breaker.record_failure()
            raise
        except asyncio.CancelledError:  # the client went away: no verdict on the backend
            breaker.release_probe()
            raise
        except Exception as exc:  # the runtime's surprise is this backend's failure
            breaker.record_failure()
            log.exception("%s backend raised", role)
            raise InferenceFailed(f"{role} backend failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._metrics.observe_live_call(role, time.perf_counter() - started)
        breaker.record_success()
        return outputs

    def count_rejected(self, status_code: int, protocol: Protocol) -> None:
        """A request refused before it reached ``infer`` (unknown model, body too large, a
        malformed request): counted too, with no backend."""
        self._metrics.count_request(NO_BACKEND, status_code, 0.0, protocol)

    # -- admin and feedback --------------------------------------------------------------------

    def count_auth_failure(self, reason: str) -> None:
        self._metrics.admin_auth_failures.labels(self.model, reason).inc()

    async def set_student_share(self, share: float) -> int:
        """On this replica, or (in a fleet) in the store, for every replica to apply."""
        if self.fleet is not None:
            return (await self.fleet.write_share(share)).generation
        previous = self.split.student_share
        generation = self.split.set_share(share)
        self._metrics.set_share(share, generation)
        log.info("student share %.4g -> %.4g (generation %d)", previous, share, generation)
        return generation

    async def record_feedback(
        self, feedback: Feedback, ticket: str | None = None, authorization: str | None = None
    ) -> dict[str, object]:
        """A label, from the client that was answered (its ticket) or a trusted pipeline (the
        feedback token): ``gateway.feedback_auth``."""
        self.feedback_auth.check(feedback.id, feedback.ticket or ticket, authorization)
        await self.shadow.answered(feedback.id)  # so a quick label still scores both backends
        scored = await self.predictions.score(feedback.id, feedback.label)
        backend, lane = lane_of(scored.backend)
        if lane is not None:  # a cascade request's: counted by its backend, and by its lane
            scored = replace(scored, backend=backend)
            if self.cascade is not None:
                self.cascade.labelled(lane, scored)
        self.task.record_feedback(scored)
        return {"id": feedback.id, "backend": scored.backend, **scored.summary()}

    @property
    def student_id(self) -> str | None:
        return self.student.id

    async def load_student(self, model_id: str) -> None:
        """``PUT /admin/models/{model}/student``: ``StudentSlot.swap``."""
        await self.student.swap(model_id)

    def model_metadata(self) -> ModelMetadata:
        return ModelMetadata(self.model, self.version, self.signature.inputs,
                             self.signature.outputs, self.student_id)  # fmt: skip


def _why_the_teacher_failed(exc: GatewayError) -> str:
    """An escalation's teacher call that gave no answer: shed or out of the request's time (no
    backend's failure, as in split mode), or the teacher's own: a timeout, or an error (an open
    circuit among them, as its breaker counts it)."""
    if isinstance(exc, Overloaded):
        return "shed"
    if isinstance(exc, DeadlineExceeded):
        return "deadline"
    return "timeout" if isinstance(exc.__cause__, BackendTimeout) else "error"
