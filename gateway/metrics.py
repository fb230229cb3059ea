"""The gateway's Prometheus metrics. Names are a public contract: dashboards, alerts and the canary
controller read them (see README, "Metrics").

Metrics live on a registry passed in, so every gateway (and every test) has its own.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway import metric_names as names
from gateway.config import CostConfig
from gateway.metric_families import (
    register_collector,
    shared_counter,
    shared_gauge,
    shared_histogram,
)
from gateway.overload import SHED_REASONS
from gateway.resilience import CircuitBreaker, CircuitState
from gateway.roles import NO_BACKEND, PROTOCOLS, ROLES, Protocol

if TYPE_CHECKING:
    from gateway.backends import Backend

# Fine enough for a useful p50 and p99 from 0.25 ms to 10 s (under ~25 % apart below 1 s).
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.00075, 0.001, 0.00125, 0.0015, 0.00175, 0.002, 0.0025, 0.003, 0.0035,
    0.004, 0.005, 0.006, 0.007, 0.008, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.06, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
    5.0, 7.5, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
KL_BUCKETS = (
    0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip

FALLBACK_REASONS = ("error", "timeout", "circuit_open", "not_loaded")
AUTH_FAILURE_REASONS = ("missing", "invalid")
SHADOW_DROP_REASONS = ("queue_full", "circuit_open")
STORE_OPERATIONS = ("join", "subscribe", "heartbeat", "register", "write_share", "remember",
                    "label")  # fmt: skip


MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
"""``distill-gateway --workers N`` sets it for its workers: every metric then lives in a file per
process, and ``/metrics`` from any worker reports the group (prometheus-client's multiprocess
mode). It has to be set before prometheus-client is imported, hence read once, here."""


def add_standard_collectors(registry: CollectorRegistry) -> None:
    """process_* (CPU, RSS, open files), python_info and python_gc_*: what every Prometheus user
    expects, and what a registry of one's own does not have until asked."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry, model: str, cost_per_hour: dict[str, float]):
        self.model = model
        self.registry = registry  # also for TaskMetrics, made once the task is known
        self._sampled: list[tuple[Gauge, Callable[[], float]]] = []
        # count_request's series; backends, codes and protocols are the gateway's, never a client's
        self._request_series: dict[tuple[str, int, str], Counter] = {}
        self._duration_series: dict[tuple[str, str], Histogram] = {}
        self._mirror: _Mirror | None = None
        self._mirrors: list[_Mirror] = []  # add_collector's, in multiprocess mode
        self._cost_per_second = {role: cost / 3600.0 for role, cost in cost_per_hour.items()}
        m = ["model"]
        mb = ["model", "backend"]
        self.requests = shared_counter(
            names.REQUESTS,
            "Inference requests answered, by the backend that served them ('none' when refused "
            "before routing), the HTTP status code (gRPC answers by their HTTP equivalent) and "
            "the protocol (http, grpc).",
            [*mb, "code", "protocol"],
            registry=registry,
        )
        self.request_duration = shared_histogram(
            names.REQUEST_DURATION,
            "Time a request spent in the gateway, from its arrival to its answer's tensors.",
            [*mb, "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.backend_duration = shared_histogram(
            names.BACKEND_DURATION,
            "Time of the backend inference call alone; "
            "path='live' answers a client, path='shadow' is a background comparison.",
            [*mb, "path"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.traffic_share = shared_gauge(
            names.TRAFFIC_SHARE,
            "Share of requests routed to each backend (0..1).",
            mb,
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.student_info = shared_gauge(
            names.STUDENT_INFO,
            "1 for the student this gateway serves, by its model registry id (the content hash "
            "of its file; 'unknown' on Triton); 0 for one it served before.",
            [*m, "student_id"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._student_shown: str | None = None
        self.traffic_generation = shared_gauge(
            names.TRAFFIC_GENERATION,
            "Increments on every change of the traffic split.",
            m,
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.shadow_comparisons = shared_counter(
            names.SHADOW_COMPARISONS,
            "Examples (batch rows) compared between teacher and student on shadow traffic.",
            m,
            registry=registry,
        )
        self.shadow_agreements = shared_counter(
            names.SHADOW_AGREEMENTS,
            "Compared examples whose top-1 classes agree.",
            m,
            registry=registry,
        )
        self.shadow_dropped = shared_counter(
            names.SHADOW_DROPPED,
            "Sampled requests not compared: the shadow queue was full (queue_full), or the "
            "backend to compare with had its circuit open (circuit_open).",
            ["model", "reason"],
            registry=registry,
        )
        self.shadow_errors = shared_counter(
            names.SHADOW_ERRORS,
            "Shadow calls that failed, by the backend called.",
            mb,
            registry=registry,
        )
        self.shadow_kl = shared_histogram(
            names.SHADOW_KL,
            "KL(teacher || student) of the softmax distributions, per compared example, in nats.",
            m,
            buckets=KL_BUCKETS,
            registry=registry,
        )
        self.feedback = shared_counter(
            names.FEEDBACK,
            "Examples labelled through the feedback API, by their true class.",
            [*mb, "class"],
            registry=registry,
        )
        self.feedback_correct = shared_counter(
            names.FEEDBACK_CORRECT,
            "Labelled examples the serving backend got right, by their true class.",
            [*mb, "class"],
            registry=registry,
        )
        self.batch_size = shared_histogram(
            names.BATCH_SIZE,
            "Rows per call of a backend with dynamic batching: how many requests' rows each "
            "batched call carried.",
            mb,
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.padding_elements = shared_counter(
            names.BATCH_PADDING,
            "Input elements that padded batching (batching.pad) added to a backend's calls; over "
            "gateway_batch_padded_call_elements_total, the share of the work spent on padding.",
            mb,
            registry=registry,
        )
        self.padded_call_elements = shared_counter(
            names.BATCH_PADDED_CALL,
            "Input elements of a backend's padded batched calls, padding included.",
            mb,
            registry=registry,
        )
        self.shadow_batch_size = shared_histogram(
            names.SHADOW_BATCH_SIZE,
            "Rows per batched shadow call: comparisons for the teacher that queued together and "
            "ran as one call (a call of one request is not counted here).",
            mb,
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.shadow_batch_duration = shared_histogram(
            names.SHADOW_BATCH_DURATION,
            "Time of a batched shadow call. Kept out of gateway_backend_duration_seconds, whose "
            "samples are one request's call each: a batch's time is not a request's latency.",
            mb,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.feedback_paired = shared_counter(
            names.FEEDBACK_PAIRED,
            "Labelled examples whose request both backends answered (one live, one on shadow "
            "traffic), by which was right and by true class: the paired sample behind the "
            "accuracy gates.",
            ["model", "outcome", "class"],
            registry=registry,
        )
        self.fallbacks = shared_counter(
            names.FALLBACKS,
            "Requests meant for one backend and served by another.",
            ["model", "from_backend", "to_backend", "reason"],
            registry=registry,
        )
        self.backend_up = shared_gauge(
            names.BACKEND_UP,
            "1 when the backend is ready and its circuit is not open.",
            mb,
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.signature_mismatch = shared_gauge(
            names.SIGNATURE_MISMATCH,
            "1 while a backend that appeared later (a Triton student) is refused because its "
            "signature differs from the teacher's.",
            mb,
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.circuit_state = shared_gauge(
            names.CIRCUIT_STATE,
            "1 for each backend's current circuit-breaker state.",
            [*mb, "state"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.shed = shared_counter(
            names.SHED,
            "Inference requests refused with 503 and Retry-After before their backend was "
            "called, by reason: queue_full (the line ahead would pass overload.max_queue_ms), "
            "queue_timeout (waited that long), deadline (the request's deadline passed first), "
            "max_inflight (the memory bound).",
            ["model", "reason"],
            registry=registry,
        )
        self.queue_delay = shared_histogram(
            names.QUEUE_DELAY,
            "Time a live request waited for its backend (a free slot, or its batch to start).",
            mb,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_target = shared_gauge(
            names.QUEUE_TARGET,
            "overload.max_queue_ms in seconds: the longest a request waits for its backend.",
            m,
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.body_timeouts = shared_counter(
            names.BODY_TIMEOUTS,
            "Requests answered 408 because their body did not arrive within "
            "overload.body_timeout_ms (slow or stalled uploads).",
            m,
            registry=registry,
        )
        self.inflight = shared_gauge(
            names.INFLIGHT,
            "Inference requests held now, from a complete body to the answer (HTTP and gRPC).",
            m,
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.max_inflight = shared_gauge(
            names.MAX_INFLIGHT,
            "overload.max_inflight: a memory bound; more requests than this held at once are shed.",
            m,
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.feedback_pending = shared_gauge(
            names.FEEDBACK_PENDING,
            "Predictions remembered and waiting for their label (bounded by feedback.max_entries, "
            "feedback.max_bytes and feedback.ttl_seconds).",
            m,
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.feedback_pending_bytes = shared_gauge(
            names.FEEDBACK_PENDING_BYTES,
            "What those predictions are charged against feedback.max_bytes.",
            m,
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.loop_lag = shared_histogram(
            names.EVENT_LOOP_LAG,
            "How late the event loop ran a timer due every 100 ms: time that every request on "
            "the loop waited for whatever held it (a big decode, a slow callback, CPU contention).",
            m,
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.admin_auth_failures = shared_counter(
            names.ADMIN_AUTH_FAILURES,
            "Admin API requests refused for a missing or wrong bearer token (reason: missing, "
            "invalid); a rising rate is someone guessing.",
            ["model", "reason"],
            registry=registry,
        )
        self.state_store_up = shared_gauge(
            names.STATE_STORE_UP,
            "1 while the state store (state.url) answers; 0 while it does not, and the replica "
            "serves at its last applied share. Always 1 for state.url: memory.",
            m,
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.state_store_errors = shared_counter(
            names.STATE_STORE_ERRORS,
            "State store operations that failed (unreachable, too slow), by operation.",
            ["model", "op"],
            registry=registry,
        )
        self.state_store_fallbacks = shared_counter(
            names.STATE_STORE_FALLBACKS,
            "What was kept in this process because the state store could not take it "
            "(op=remember: predictions, which only this replica can then join with a label).",
            ["model", "op"],
            registry=registry,
        )
        self.fleet_replicas = shared_gauge(
            names.FLEET_REPLICAS,
            "Live replicas in the fleet's registry as this replica last read it (1 for "
            "state.url: memory).",
            m,
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._live_wall_seconds: dict[str, float] = dict.fromkeys(ROLES, 0.0)  # wall_seconds basis
        self._live_duration: dict[str, Histogram] = {
            role: self.backend_duration.labels(model, role, names.LIVE) for role in ROLES
        }
        # Create every series up front: a counter that appears only on its first event would
        # make rate() and absent() blind to its start.
        # agreements and KL: by the task that has them (gateway.tasks), so a regression shows none
        self.shadow_comparisons.labels(model)
        for reason in SHADOW_DROP_REASONS:
            self.shadow_dropped.labels(model, reason)
        self._shed = {reason: self.shed.labels(model, reason) for reason in SHED_REASONS}
        for role in ROLES:
            self.queue_delay.labels(model, role)
        self.body_timeouts.labels(model)
        self.state_store_up.labels(model).set(1)
        self.fleet_replicas.labels(model).set(1)
        self.state_store_fallbacks.labels(model, "remember")
        for op in STORE_OPERATIONS:
            self.state_store_errors.labels(model, op)
        self.loop_lag.labels(model)
        for reason in AUTH_FAILURE_REASONS:
            self.admin_auth_failures.labels(model, reason)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(model, "student", "teacher", reason)
        for role in ROLES:
            for protocol in PROTOCOLS:
                self.requests.labels(model, role, "200", protocol)
                self.request_duration.labels(model, role, protocol)
            for path in (names.LIVE, names.SHADOW):
                self.backend_duration.labels(model, role, path)
            self.shadow_errors.labels(model, role)
            self.signature_mismatch.labels(model, role)

    def start_classes(self, classes: int) -> None:
        """Every feedback series at 0 from the start, so that PromQL's increase() sees their first
        labels (a series that appears with a value loses it)."""
        for label in map(str, range(classes)):
            for role in ROLES:
                self.feedback.labels(self.model, role, label)
                self.feedback_correct.labels(self.model, role, label)
            for outcome in names.PAIRED_OUTCOMES:
                self.feedback_paired.labels(self.model, outcome, label)

    def watch_backends(
        self,
        backends: Mapping[str, Backend],
        breakers: Mapping[str, CircuitBreaker],
        cost: CostConfig | None = None,
    ) -> None:
        """Backend health, circuit states, what the backends measured (abandoned calls, CPU time,
        memory) and what they cost, read at scrape time (never on the request path)."""
        cost = cost or CostConfig()
        # cpu_seconds only where the backend measures its CPU; a Triton backend stays on wall time
        bases = {role: "cpu_seconds" if cost.model == "cpu_seconds" and backend.measures_cpu
                 else "wall_seconds" for role, backend in backends.items()}  # fmt: skip
        accounting = _BackendAccounting(self, backends, bases, cost.price_per_core_hour / 3600.0)
        if MULTIPROCESS:
            self._mirror = _Mirror(accounting)
        else:
            register_collector(self.registry, accounting)
        for role, backend in backends.items():
            breaker = breakers[role]
            self.watch(self.backend_up.labels(self.model, role), _is_up(backend, breaker))
            for state in CircuitState:
                self.watch(self.circuit_state.labels(self.model, role, state.value),
                           _is_in(breaker, state))  # fmt: skip

    def add_collector(self, collector: Collector) -> None:
        """A collector read at scrape time (the drift summaries); in multiprocess mode mirrored
        into files like the backends' accounting, so every worker's counts are summed."""
        if MULTIPROCESS:
            self._mirrors.append(_Mirror(collector))
        else:
            register_collector(self.registry, collector)

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """A gauge (a labelled child) whose value is ``read()`` at scrape time; in multiprocess
        mode, written by ``sample`` instead (a function cannot be read from another process)."""
        if MULTIPROCESS:
            self._sampled.append((gauge, read))
        else:
            gauge.set_function(read)

    def sample(self) -> None:
        """Multiprocess mode: writes this process's read-at-scrape-time values where the other
        workers' ``/metrics`` can read them (every second, and before answering a scrape)."""
        for gauge, read in self._sampled:
            gauge.set(read())
        if self._mirror is not None:
            self._mirror.copy()
        for mirror in self._mirrors:
            mirror.copy()

    async def sample_forever(self, interval: float = 1.0) -> None:
        while True:
            self.sample()
            await asyncio.sleep(interval)

    def count_fallback(self, from_backend: str, to_backend: str, reason: str) -> None:
        self.fallbacks.labels(self.model, from_backend, to_backend, reason).inc()

    def count_request(self, backend: str, code: int, seconds: float, protocol: Protocol) -> None:
        # Every request comes here: its series are looked up once each, not labels() each time
        # (a lock and a label tuple; a third of the counting's cost).
        counter = self._request_series.get((backend, code, protocol))
        if counter is None:
            counter = self.requests.labels(self.model, backend, str(code), protocol)
            self._request_series[(backend, code, protocol)] = counter
        counter.inc()
        if backend != NO_BACKEND:
            timer = self._duration_series.get((backend, protocol))
            if timer is None:
                timer = self.request_duration.labels(self.model, backend, protocol)
                self._duration_series[(backend, protocol)] = timer
            timer.observe(seconds)

    def count_shed(self, reason: str) -> None:
        self._shed[reason].inc()

    def live_wall_dollars(self, backend: str) -> float:
        return self._live_wall_seconds[backend] * self._cost_per_second[backend]

    @contextmanager
    def shadow_call(self, backend: str) -> Iterator[None]:
        """Times one request's shadow call (shadow calls cost nothing: they are not billed)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.backend_duration.labels(self.model, backend, names.SHADOW).observe(seconds)

    def observe_live_call(self, backend: str, seconds: float) -> None:
        """A live call's time, which also accrues its backend's cost; timed by the caller (a
        generator context manager on the request path cost 5 % of the event loop)."""
        self._live_duration[backend].observe(seconds)
        self._live_wall_seconds[backend] += seconds

    def set_student(self, student_id: str | None) -> None:
        shown = student_id or "unknown"
        if self._student_shown not in (None, shown):
            self.student_info.labels(self.model, self._student_shown).set(0)
        self.student_info.labels(self.model, shown).set(1)
        self._student_shown = shown

    def set_share(self, student_share: float, generation: int) -> None:
        self.traffic_share.labels(self.model, "student").set(student_share)
        self.traffic_share.labels(self.model, "teacher").set(1.0 - student_share)
        self.traffic_generation.labels(self.model).set(generation)


def exposition_registry(every: list[GatewayMetrics]) -> CollectorRegistry:
    """What ``/metrics`` serves: the models' registry, or in multiprocess mode every worker's
    files (this worker's sampled values written first, for every model)."""
    if not MULTIPROCESS:
        return every[0].registry
    group = CollectorRegistry()
    for metrics in every:
        group.register(_SampleFirst(metrics))
    MultiProcessCollector(group)
    return group


class _BackendAccounting(Collector):
    """What the backends counted themselves (abandoned calls, CPU time, memory, a remote
    server's compute time), and the cost on each backend's basis; read at scrape time."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        backends: Mapping[str, Backend],
        bases: Mapping[str, str],
        dollars_per_core_second: float,
    ) -> None:
        self._metrics = metrics
        self._backends = backends
        self._bases = bases
        self._per_core_second = dollars_per_core_second

    def collect(self) -> Iterator[Metric]:
        model, mb = self._metrics.model, ["model", "backend"]
        abandoned = CounterMetricFamily(
            names.BACKEND_ABANDONED,
            "Backend calls given up by a timeout while their thread kept running them.",
            labels=mb,
        )
        abandoned_running = GaugeMetricFamily(
            names.BACKEND_ABANDONED_RUNNING,
            "Timed-out calls still running in an in-process backend's threads (ONNX Runtime "
            "cannot stop a call), by lane; when they fill a lane, it refuses new work.",
            labels=[*mb, "lane"],
        )
        cpu = CounterMetricFamily(
            names.CPU,
            "CPU time of an in-process backend's calls (thread CPU time around each call), by "
            "path (live, shadow); 0 for a remote backend.",
            labels=[*mb, "path"],
        )
        memory = GaugeMetricFamily(
            names.BACKEND_MEMORY,
            "Resident memory an in-process backend's model took to load and warm up (session, "
            "weights, arena), measured once at load.",
            labels=mb,
        )
        remote = CounterMetricFamily(
            names.BACKEND_REMOTE_COMPUTE,
            "A remote backend's compute time for its model as its server reports it "
            "(Triton's nv_inference_compute_infer_duration_us: every client's calls).",
            labels=mb,
        )
        cost = CounterMetricFamily(
            names.COST,
            "What live calls cost: cost_per_hour x wall seconds (basis wall_seconds), or "
            "cost.price_per_core_hour x measured CPU seconds (basis cpu_seconds).",
            labels=[*mb, "basis"],
        )
        for role, backend in self._backends.items():
            abandoned.add_metric([model, role], backend.abandoned_total)
            for lane, seconds in backend.cpu_seconds.items():
                cpu.add_metric([model, role, lane], seconds)
                abandoned_running.add_metric([model, role, lane], backend.abandoned_in(lane))
            if backend.memory_bytes is not None:
                memory.add_metric([model, role], backend.memory_bytes)
            if backend.remote_compute_seconds is not None:
                remote.add_metric([model, role], backend.remote_compute_seconds)
            basis = self._bases[role]
            if basis == "cpu_seconds":
                dollars = backend.cpu_seconds["live"] * self._per_core_second
            else:
                dollars = self._metrics.live_wall_dollars(role)
            cost.add_metric([model, role, basis], dollars)
        yield from (abandoned, abandoned_running, cpu, memory, remote, cost)


HAMMING_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
COSINE_DISTANCE_BUCKETS = (
    1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
)  # fmt: skip
RELATIVE_ERROR_BUCKETS = (
    *(m * 10.0**e for e in range(-4, 1) for m in (1, 2, 5)), 10.0,
)  # fmt: skip
"""Relative errors are capped at 10 (``gateway.feedback.RELATIVE_ERROR_CAP``): +Inf stays empty."""


class TaskMetrics:
    """The comparison metrics that fit the model's task (``gateway.tasks``), made for that task
    only: a regression gateway shows no class series, a classifier no error histograms. The
    classification ones (agreement, KL, feedback by class) stay in ``GatewayMetrics``."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        task: str,
        labels: int = 0,
        abs_error_buckets: tuple[float, ...] = (),
    ) -> None:
        registry, model, m, mb = metrics.registry, metrics.model, ["model"], ["model", "backend"]
        info = shared_gauge(
            names.TASK_INFO,
            "1, labelled by the model's task (task: in the config).",
            ["model", "task"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        info.labels(model, task).set(1)
        self.label_agreements: list[Counter] = []
        if task == "multilabel":
            per_label = shared_counter(
                names.SHADOW_LABEL_AGREEMENTS,
                "Multilabel: compared examples "
                "on which teacher and student agree about this label.",
                ["model", "label"],
                registry=registry,
            )
            self.label_agreements = [per_label.labels(model, str(i)) for i in range(labels)]
            self.shadow_hamming = self._histogram(
                names.SHADOW_HAMMING_LOSS,
                "Multilabel: per compared example, the share of "
                "labels on which teacher and student disagree.",
                HAMMING_BUCKETS,
                m,
                registry,
            )
            self.feedback_hamming = self._histogram(
                names.FEEDBACK_HAMMING_LOSS,
                "Multilabel: per labelled example, the share of "
                "its labels the serving backend got wrong.",
                HAMMING_BUCKETS,
                mb,
                registry,
            )
        if task == "regression":
            self.shadow_abs_error = self._histogram(
                names.SHADOW_ABS_ERROR,
                "Regression: per compared example, mean |student - "
                "teacher| over its output elements.",
                abs_error_buckets,
                m,
                registry,
            )
            self.shadow_relative_error = self._histogram(
                names.SHADOW_RELATIVE_ERROR,
                "Regression: per compared example, that over the "
                "teacher's mean magnitude (capped at 10).",
                RELATIVE_ERROR_BUCKETS,
                m,
                registry,
            )
            self.feedback_abs_error = self._histogram(
                names.FEEDBACK_ABS_ERROR,
                "Regression: per labelled example, mean |answer - label| of the serving backend.",
                abs_error_buckets,
                mb,
                registry,
            )
            self.feedback_relative_error = self._histogram(
                names.FEEDBACK_RELATIVE_ERROR,
                "Regression: per labelled example, that over the "
                "label's mean magnitude (capped at 10).",
                RELATIVE_ERROR_BUCKETS,
                mb,
                registry,
            )
        if task == "embedding":
            self.shadow_cosine_distance = self._histogram(
                names.SHADOW_COSINE_DISTANCE,
                "Embedding: per compared example, 1 - cosine similarity of student and teacher.",
                COSINE_DISTANCE_BUCKETS,
                m,
                registry,
            )
        for family in (getattr(self, name, None) for name in ("shadow_hamming", "shadow_abs_error",
                       "shadow_relative_error", "shadow_cosine_distance")):  # fmt: skip
            if family is not None:
                family.labels(model)  # every series at 0 from the start
        for family in (getattr(self, name, None) for name in ("feedback_hamming",
                       "feedback_abs_error", "feedback_relative_error")):  # fmt: skip
            if family is not None:
                for role in ROLES:
                    family.labels(model, role)

    @staticmethod
    def _histogram(
        name: str, doc: str, buckets: tuple[float, ...], labels: list[str],
        registry: CollectorRegistry,
    ) -> Histogram:  # fmt: skip
        return shared_histogram(name, doc, labels, buckets=buckets, registry=registry)


class _SampleFirst(Collector):
    """Registered ahead of the multiprocess collector: this worker's sampled values are fresh."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        self._metrics.sample()
        return iter(())


class _Mirror:
    """Multiprocess mode: copies a collector's values into metrics that live in files, so every
    worker's are summed: counters by their increase since the last copy, gauges as they are
    (summed over live workers)."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector
        self._metrics: dict[str, Counter | Gauge] = {}
        self._copied: dict[tuple[str, tuple[str, ...]], float] = {}

    def copy(self) -> None:
        for family in self._collector.collect():
            for sample in family.samples:
                if family.type == "counter" and not sample.name.endswith("_total"):
                    continue
                metric = self._metric(family, list(sample.labels))
                child = metric.labels(**sample.labels)
                if isinstance(child, Counter):
                    key = (family.name, tuple(sample.labels.values()))
                    increase = sample.value - self._copied.get(key, 0.0)
                    if increase > 0:
                        child.inc(increase)
                        self._copied[key] = sample.value
                else:
                    child.set(sample.value)

    def _metric(self, family: Metric, labels: list[str]) -> Counter | Gauge:
        metric = self._metrics.get(family.name)
        if metric is None:  # registry=None: the files are what is read, not a registry
            if family.type == "counter":
                metric = Counter(family.name, family.documentation, labels, registry=None)
            else:
                metric = Gauge(family.name, family.documentation, labels, registry=None,
                               multiprocess_mode="livesum")  # fmt: skip
            self._metrics[family.name] = metric
        return metric


def _is_up(backend: Backend, breaker: CircuitBreaker) -> Callable[[], float]:
    return lambda: float(backend.is_ready() and breaker.state is not CircuitState.OPEN)


def _is_in(breaker: CircuitBreaker, state: CircuitState) -> Callable[[], float]:
    return lambda: float(breaker.state is state)
