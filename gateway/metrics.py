"""The gateway's Prometheus metrics. Names are a public contract: dashboards, alerts and the canary
controller read them (see README, "Metrics").

Metrics live on a registry passed in, so every gateway (and every test) has its own.
"""

from __future__ import annotations

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
from prometheus_client.registry import Collector

from gateway import metric_names as names
from gateway.config import CostConfig
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


def add_standard_collectors(registry: CollectorRegistry) -> None:
    """process_* (CPU, RSS, open files), python_info and python_gc_*: what every Prometheus user
    expects, and what a registry of one's own does not have until asked."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry, model: str, cost_per_hour: dict[str, float]):
        self.model = model
        add_standard_collectors(registry)
        self._cost_per_second = {role: cost / 3600.0 for role, cost in cost_per_hour.items()}
        m = ["model"]
        mb = ["model", "backend"]
        self.requests = Counter(
            names.REQUESTS,
            "Inference requests answered, by the backend that served them ('none' when refused "
            "before routing), the HTTP status code (gRPC answers by their HTTP equivalent) and "
            "the protocol (http, grpc).",
            [*mb, "code", "protocol"],
            registry=registry,
        )
        self.request_duration = Histogram(
            names.REQUEST_DURATION,
            "Time a request spent in the gateway, from its arrival to its answer's tensors.",
            [*mb, "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.backend_duration = Histogram(
            names.BACKEND_DURATION,
            "Time of the backend inference call alone; "
            "path='live' answers a client, path='shadow' is a background comparison.",
            [*mb, "path"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.traffic_share = Gauge(
            "gateway_traffic_share",
            "Share of requests routed to each backend (0..1).",
            mb,
            registry=registry,
        )
        self.traffic_generation = Gauge(
            "gateway_traffic_generation",
            "Increments on every change of the traffic split.",
            m,
            registry=registry,
        )
        self.shadow_comparisons = Counter(
            names.SHADOW_COMPARISONS,
            "Examples (batch rows) compared between teacher and student on shadow traffic.",
            m,
            registry=registry,
        )
        self.shadow_agreements = Counter(
            names.SHADOW_AGREEMENTS,
            "Compared examples whose top-1 classes agree.",
            m,
            registry=registry,
        )
        self.shadow_dropped = Counter(
            "gateway_shadow_dropped_total",
            "Sampled requests not compared: the shadow queue was full (queue_full), or the "
            "backend to compare with had its circuit open (circuit_open).",
            ["model", "reason"],
            registry=registry,
        )
        self.shadow_errors = Counter(
            "gateway_shadow_errors_total",
            "Shadow calls that failed, by the backend called.",
            mb,
            registry=registry,
        )
        self.shadow_kl = Histogram(
            names.SHADOW_KL,
            "KL(teacher || student) of the softmax distributions, per compared example, in nats.",
            m,
            buckets=KL_BUCKETS,
            registry=registry,
        )
        self.feedback = Counter(
            names.FEEDBACK,
            "Examples labelled through the feedback API, by their true class.",
            [*mb, "class"],
            registry=registry,
        )
        self.feedback_correct = Counter(
            names.FEEDBACK_CORRECT,
            "Labelled examples the serving backend got right, by their true class.",
            [*mb, "class"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "gateway_batch_size",
            "Rows per call of a backend with dynamic batching: how many requests' rows each "
            "batched call carried.",
            mb,
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.feedback_paired = Counter(
            names.FEEDBACK_PAIRED,
            "Labelled examples whose request both backends answered (one live, one on shadow "
            "traffic), by which was right and by true class: the paired sample behind the "
            "accuracy gates.",
            ["model", "outcome", "class"],
            registry=registry,
        )
        self.fallbacks = Counter(
            names.FALLBACKS,
            "Requests meant for one backend and served by another.",
            ["model", "from_backend", "to_backend", "reason"],
            registry=registry,
        )
        self.backend_up = Gauge(
            "gateway_backend_up",
            "1 when the backend is ready and its circuit is not open.",
            mb,
            registry=registry,
        )
        self._registry = registry
        self.signature_mismatch = Gauge(
            "gateway_backend_signature_mismatch",
            "1 while a backend that appeared later (a Triton student) is refused because its "
            "signature differs from the teacher's.",
            mb,
            registry=registry,
        )
        self.circuit_state = Gauge(
            "gateway_circuit_state",
            "1 for each backend's current circuit-breaker state.",
            [*mb, "state"],
            registry=registry,
        )
        self.shed = Counter(
            "gateway_shed_total",
            "Inference requests refused at once with 503 because the process already held "
            "overload.max_inflight of them (reason: max_inflight).",
            ["model", "reason"],
            registry=registry,
        )
        self.inflight = Gauge(
            "gateway_inflight_requests",
            "Inference requests being processed now (HTTP and gRPC).",
            m,
            registry=registry,
        )
        self.max_inflight = Gauge(
            "gateway_max_inflight_requests",
            "overload.max_inflight: more requests than this at once are shed.",
            m,
            registry=registry,
        )
        self.feedback_pending = Gauge(
            "gateway_feedback_pending",
            "Predictions remembered and waiting for their label (bounded by feedback.max_entries, "
            "feedback.max_bytes and feedback.ttl_seconds).",
            m,
            registry=registry,
        )
        self.feedback_pending_bytes = Gauge(
            "gateway_feedback_pending_bytes",
            "What those predictions are charged against feedback.max_bytes.",
            m,
            registry=registry,
        )
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 100 ms: time that every request on "
            "the loop waited for whatever held it (a big decode, a slow callback, CPU contention).",
            m,
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.admin_auth_failures = Counter(
            "gateway_admin_auth_failures_total",
            "Admin API requests refused for a missing or wrong bearer token (reason: missing, "
            "invalid); a rising rate is someone guessing.",
            ["model", "reason"],
            registry=registry,
        )
        self.state_store_up = Gauge(
            "gateway_state_store_up",
            "1 while the state store (state.url) answers; 0 while it does not, and the replica "
            "serves at its last applied share. Always 1 for state.url: memory.",
            m,
            registry=registry,
        )
        self.state_store_errors = Counter(
            "gateway_state_store_errors_total",
            "State store operations that failed (unreachable, too slow), by operation.",
            ["model", "op"],
            registry=registry,
        )
        self.state_store_fallbacks = Counter(
            "gateway_state_store_fallbacks_total",
            "What was kept in this process because the state store could not take it "
            "(op=remember: predictions, which only this replica can then join with a label).",
            ["model", "op"],
            registry=registry,
        )
        self.fleet_replicas = Gauge(
            "gateway_fleet_replicas",
            "Live replicas in the fleet's registry as this replica last read it (1 for "
            "state.url: memory).",
            m,
            registry=registry,
        )
        self._live_wall_seconds: dict[str, float] = dict.fromkeys(ROLES, 0.0)  # wall_seconds basis
        # Create every series up front: a counter that appears only on its first event would
        # make rate() and absent() blind to its start.
        for per_model in (self.shadow_comparisons, self.shadow_agreements, self.shadow_kl):
            per_model.labels(model)
        for reason in SHADOW_DROP_REASONS:
            self.shadow_dropped.labels(model, reason)
        self.shed.labels(model, "max_inflight")
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
            for path in ("live", "shadow"):
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
        self._registry.register(_BackendAccounting(self, backends, bases,
                                                   cost.price_per_core_hour / 3600.0))  # fmt: skip
        for role, backend in backends.items():
            breaker = breakers[role]
            self.backend_up.labels(self.model, role).set_function(_is_up(backend, breaker))
            for state in CircuitState:
                self.circuit_state.labels(self.model, role, state.value).set_function(
                    _is_in(breaker, state)
                )

    def count_fallback(self, from_backend: str, to_backend: str, reason: str) -> None:
        self.fallbacks.labels(self.model, from_backend, to_backend, reason).inc()

    def count_request(self, backend: str, code: int, seconds: float, protocol: Protocol) -> None:
        self.requests.labels(self.model, backend, str(code), protocol).inc()
        if backend != NO_BACKEND:
            self.request_duration.labels(self.model, backend, protocol).observe(seconds)

    def live_wall_dollars(self, backend: str) -> float:
        return self._live_wall_seconds[backend] * self._cost_per_second[backend]

    @contextmanager
    def backend_call(self, backend: str, path: str) -> Iterator[None]:
        """Times a backend call; live calls also accrue the backend's cost."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.backend_duration.labels(self.model, backend, path).observe(seconds)
            if path == "live":
                self._live_wall_seconds[backend] += seconds

    def set_share(self, student_share: float, generation: int) -> None:
        self.traffic_share.labels(self.model, "student").set(student_share)
        self.traffic_share.labels(self.model, "teacher").set(1.0 - student_share)
        self.traffic_generation.labels(self.model).set(generation)


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
            "gateway_backend_abandoned_calls",
            "Backend calls given up by a timeout while their thread kept running them.",
            labels=mb,
        )
        abandoned_running = GaugeMetricFamily(
            "gateway_backend_abandoned_calls_running",
            "Timed-out calls still running in an in-process backend's threads (ONNX Runtime "
            "cannot stop a call), by lane; when they fill a lane, it refuses new work.",
            labels=[*mb, "lane"],
        )
        cpu = CounterMetricFamily(
            "gateway_backend_cpu_seconds",
            "CPU time of an in-process backend's calls (thread CPU time around each call), by "
            "path (live, shadow); 0 for a remote backend.",
            labels=[*mb, "path"],
        )
        memory = GaugeMetricFamily(
            "gateway_backend_memory_bytes",
            "Resident memory an in-process backend's model took to load and warm up (session, "
            "weights, arena), measured once at load.",
            labels=mb,
        )
        remote = CounterMetricFamily(
            "gateway_backend_remote_compute_seconds",
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


def _is_up(backend: Backend, breaker: CircuitBreaker) -> Callable[[], float]:
    return lambda: float(backend.is_ready() and breaker.state is not CircuitState.OPEN)


def _is_in(breaker: CircuitBreaker, state: CircuitState) -> Callable[[], float]:
    return lambda: float(breaker.state is state)
