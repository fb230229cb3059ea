"""Gateway configuration: a YAML file validated by pydantic, plus ``DISTILL_GATEWAY_*`` variables.

The admin token only ever comes from the environment (``DISTILL_GATEWAY_ADMIN_TOKEN``), so it is
never written into a config file or a log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import (
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.cascade_config import CascadeConfig
from gateway.drift_config import DriftConfig
from gateway.roles import ROLES
from gateway.task_config import TASK_KINDS, ClassificationTask, TaskConfig
from gateway.validation import StrictModel, describe_errors, read_yaml_mapping
from models import REGISTRY_PATH, STUDENT_PATH, TEACHER_PATH


class BatchingConfig(StrictModel):
    """Dynamic batching of live calls (see ``gateway.batching``)."""

    max_batch_size: int = Field(default=64, ge=1, le=4096)
    """Rows one call may carry; a single request with more runs alone."""
    max_delay_us: int = Field(default=500, ge=0, le=1_000_000)
    """How long a request may wait for others to join its call, in microseconds."""
    pad: bool = False
    """Batch requests whose shapes differ along the model's dynamic axes (a sequence length) by
    padding each input to the longest in the batch with its ``inputs.<name>.pad_value`` (0 by
    default, so attention masks are padded with 0); outputs that carry a padded axis are cut back
    to each request's own length. Off: only requests of identical shapes join. Opt-in because a
    model that reads no mask answers differently for a padded row."""
    length_buckets: list[int] | None = Field(default=None, min_length=1)
    """With ``pad``: bucket edges (ascending, e.g. [16, 32, 64, 128]). A batch pads its dynamic
    axes up to the smallest edge that holds its longest request (past the last edge: the
    longest), and only requests of one bucket join, so short requests are not padded to long
    ones. None: pad to the longest in the batch."""

    @model_validator(mode="after")
    def _buckets_need_padding(self) -> BatchingConfig:
        buckets = self.length_buckets
        if buckets is not None:
            if not self.pad:
                raise ValueError("batching.length_buckets needs batching.pad: true")
            if buckets != sorted(set(buckets)) or buckets[0] < 1:
                raise ValueError("batching.length_buckets must be positive and ascending")
        return self


class InputConfig(StrictModel):
    """What the gateway knows of one model input beyond its declared signature."""

    max_shape: list[int] | None = None
    """The most each axis may be, -1 for no maximum beyond the declared shape (``[-1, 128]``:
    sequences of at most 128 for an input of shape [-1, -1]). A longer request is a 400."""
    pad_value: float = 0
    """What padded batching fills this input with (0: a padding token id 0, a mask of 0)."""
    value_range: tuple[float, float] | None = None
    """The values this input may hold, inclusive (``[0, 31]``: token ids of a 32-token
    vocabulary); a request with any value outside is a 400 naming the input before any model
    runs. Unset: the model itself is the judge (ONNX Runtime's refusal is a 400 too)."""
    warmup_range: tuple[int, int] = (0, 0)
    """Integer inputs: warm-up values are drawn from [low, high] (say [0, vocabulary size - 1]
    for token ids); 0 by default, valid for any embedding table, mask or type id."""


class OutputConfig(StrictModel):
    """What the gateway knows of one model output beyond its declared signature."""

    padded_axes: dict[int, tuple[str, int]] | None = None
    """Padded batching: which axes of this output carry a padded input axis, output axis ->
    [input, input axis] (``{1: [input_ids, 1]}``: cut back to each request's own length of
    ``input_ids``); ``{}``: none does, the output is returned whole. Unset: read from the
    model's axis names (an ONNX output axis named like an input's, ``seq``); a dynamic output
    axis tied to nothing fails start-up with ``batching.pad`` (Triton reports no axis names)."""


class WarmupConfig(StrictModel):
    """The calls each backend makes before it serves, so the first requests do not pay for
    allocation. Built from the signature: every input, at ``batch_sizes`` rows, each other
    dynamic axis at ``length``, integers in ``inputs.<name>.warmup_range``, BYTES as short
    text; or the ``examples`` given."""

    length: int = Field(default=16, ge=1)
    """The size warm-up gives every dynamic axis but the batch axis (a sequence length)."""
    batch_sizes: list[int] = Field(default=[1, 64, 1], min_length=1)
    """One warm-up call per entry, of this many rows (a Triton backend makes only the first)."""
    examples: dict[str, list[Any]] | None = None
    """Example tensors instead, by input name, as nested lists of one batch (strings for
    BYTES), checked against the signature at start-up; run twice."""


class OnnxBackendConfig(StrictModel):
    """A model served in process by ONNX Runtime."""

    kind: Literal["onnx"] = "onnx"
    path: Path
    """The ONNX file."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` uses CUDA only when a session really gets it; ``cuda`` fails start-up without it."""
    cost_per_hour: float = Field(default=0.0, ge=0)
    """Dollars per hour of the hardware that serves this backend (for the cost metrics)."""
    intra_op_threads: int = Field(default=1, ge=0)
    """ONNX Runtime threads inside one call; 0 lets ONNX Runtime pick. 1 suits small models,
    where concurrency comes from parallel requests rather than from splitting one call."""
    max_concurrency: int = Field(default=2, ge=1)
    """Calls run at once (worker threads); ONNX Runtime releases the GIL while it runs."""
    timeout_ms: float = Field(default=1000.0, gt=0)
    """A call slower than this is abandoned and counts as a failure of this backend."""
    inline_below_us: float = Field(default=100.0, ge=0)
    """A live call on the CPU expected (from the calls measured so far) to take less than this
    runs on the event loop: for a small model the hop to a thread costs more than the model.
    Such a call cannot time out or be abandoned; 0 runs every call on the backend's threads."""
    inline_max_file_bytes: int = Field(default=1 << 20, ge=0)
    """Only a model whose file is at most this big (1 MiB: about 260 k FP32 weights) ever runs
    on the event loop, whatever the timings say: a teacher stays on its threads on any machine."""
    batching: BatchingConfig | None = None
    """Dynamic batching of live requests; off when absent."""


class TlsConfig(StrictModel):
    """TLS for the channel to Triton; paths to PEM files."""

    enabled: bool = False
    root_certificates: Path | None = None
    """CA bundle to verify Triton's certificate (default: the system's)."""
    private_key: Path | None = None
    """Client key, for mutual TLS."""
    certificate_chain: Path | None = None
    """Client certificate chain, for mutual TLS."""


class ServerTlsConfig(StrictModel):
    """TLS for the gateway's own listeners (V2 HTTP, admin, metrics, gRPC); PEM paths."""

    certfile: Path | None = None
    """The server's certificate chain."""
    keyfile: Path | None = None
    """Its private key."""

    @model_validator(mode="after")
    def _both_or_neither(self) -> ServerTlsConfig:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("tls.certfile and tls.keyfile go together: set both, or neither")
        return self

    @property
    def enabled(self) -> bool:
        return self.certfile is not None


class TritonBackendConfig(StrictModel):
    """A model served by a remote Triton Inference Server, reached with tritonclient."""

    kind: Literal["triton"]
    url: str = Field(min_length=1)
    """host:port of Triton's gRPC (default 8001) or HTTP (8000) endpoint."""
    model_name: str = Field(min_length=1)
    model_version: str = ""
    """Empty: Triton's version policy decides."""
    protocol: Literal["grpc", "http"] = "grpc"
    timeout_ms: float = Field(default=1000.0, gt=0)
    """A call slower than this is abandoned and counts as a failure of this backend."""
    tls: TlsConfig = Field(default_factory=TlsConfig)
    cost_per_hour: float = Field(default=0.0, ge=0)
    """Dollars per hour of the hardware that serves this backend (for the cost metrics)."""
    ready_poll_seconds: float = Field(default=1.0, gt=0)
    """How often Triton's model readiness is polled in the background."""
    metrics_url: str | None = None
    """Triton's metrics endpoint (``http://triton:8002/metrics``): when set, the model's compute
    time is read from it in the background and re-exported as
    gateway_backend_remote_compute_seconds_total."""
    metrics_poll_seconds: float = Field(default=5.0, gt=0)
    batching: BatchingConfig | None = None
    """Dynamic batching of live requests in the gateway (one remote call per batch); off when
    absent. Triton's own dynamic batcher, if configured, batches across all its clients."""


def _backend_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "onnx"))
    return str(getattr(value, "kind", "onnx"))


BACKEND_KINDS = ("onnx", "triton")

# Picked by ``kind`` (``onnx`` when absent).
BackendConfig = Annotated[
    Annotated[OnnxBackendConfig, Tag("onnx")] | Annotated[TritonBackendConfig, Tag("triton")],
    Discriminator(_backend_kind),
]


class TrafficConfig(StrictModel):
    student_share: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of requests served by the student at start-up (changed at run time by the admin
    API)."""
    seed: int | None = None
    """Seeds the random split (requests without a routing key), for reproducible load tests;
    None draws from the system's entropy."""
    mode: Literal["split", "cascade"] = "split"
    """split: the student's share of requests is answered by the student. cascade: that share
    goes through the cascade (the student answers when it is sure, else the teacher;
    ``gateway.cascade``), the rest straight to the teacher."""
    cascade: CascadeConfig | None = None
    """The cascade's threshold (``traffic.mode: cascade``; required there)."""

    @model_validator(mode="after")
    def _cascade_configured(self) -> TrafficConfig:
        if self.mode == "cascade" and self.cascade is None:
            raise ValueError("traffic.mode cascade needs traffic.cascade (min_confidence or "
                             "max_disagreement)")  # fmt: skip
        return self


class ListenerConfig(StrictModel):
    """A port of its own for the admin API or ``/metrics``, kept off the public Service."""

    port: int | None = Field(default=None, ge=1, le=65535)
    """None: served on the main port, with the V2 API."""
    host: str | None = None
    """The address to bind; default: the main ``--host``."""


class GrpcConfig(StrictModel):
    """The Open Inference Protocol over gRPC, beside HTTP, on the same core."""

    port: int | None = Field(default=None, ge=0, le=65535)
    """The gRPC port (Triton's is 8001); 0 or absent: no gRPC endpoint."""
    host: str | None = None
    """The address to bind; default: the main ``--host``."""


class ShadowConfig(StrictModel):
    sample_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    """Fraction of live requests also run on the other backend to compare the two."""
    queue_size: int = Field(default=256, ge=1)
    """Comparisons waiting at most; when full, new ones are dropped (and counted), never waited
    for."""
    workers: int = Field(default=1, ge=1)
    """Background tasks draining the queue: shadow calls in flight at most. An in-process
    backend keeps this many threads for them, apart from the live ones."""
    timeout_ms: float = Field(default=1000.0, gt=0)
    """A shadow call slower than this is given up (counted in gateway_shadow_errors_total)."""
    max_batch_size: int = Field(default=64, ge=1)
    """Comparisons for the teacher run in calls of up to this many rows (1: one call each). The
    student's shadow calls always run alone: their latency is what a dark launch's latency gates
    judge."""
    max_delay_ms: float = Field(default=10.0, ge=0, le=1000)
    """How long the first comparison for the teacher waits for others to join its call (0: only
    those already queued). No client waits for it; a label that arrives first waits for its
    request's shadow answer, so that it still scores both backends."""


class OverloadConfig(StrictModel):
    """Admission by time: what a replica does when more requests arrive than it can answer."""

    max_queue_ms: float = Field(default=100.0, gt=0)
    """The longest a request waits for its backend (in its queue, or its batcher's). A request
    the line ahead would keep waiting longer, or that has waited this long, is shed with 503
    and Retry-After (gRPC UNAVAILABLE); a request's own deadline (the V2 ``timeout`` parameter,
    the gRPC deadline) shortens it. A request counts from when its body is complete."""
    max_inflight: int = Field(default=4096, ge=1)
    """A memory bound, not the working limit: requests held at once (decoded and not yet
    answered), beyond which a request is shed at once (reason ``max_inflight``)."""
    max_body_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    """A memory bound on request bodies being read and decoded at once (each counts its declared
    length, or ``max_request_bytes`` without one); beyond it a request is shed at once (reason
    ``body_memory``)."""
    body_timeout_ms: float = Field(default=10_000.0, gt=0)
    """The longest a client may take to send a request's body: a slower upload is answered 408
    and counted (gateway_body_timeouts_total), and never held a place in the queue."""
    retry_after_seconds: int = Field(default=1, ge=0)
    """What a shed request's Retry-After header says."""


class ShutdownConfig(StrictModel):
    """What SIGTERM does: drain (readiness 503 while still serving, so load balancers move
    away), then stop accepting and finish what is held, then exit 0."""

    drain_seconds: float = Field(default=5.0, ge=0)
    """How long to keep serving after SIGTERM with readiness 503: at least what endpoints take
    to drop the pod (Kubernetes: a few seconds). 0: stop accepting at once. SIGINT (Ctrl-C) and
    a second SIGTERM skip what is left of it."""
    grace_seconds: float = Field(default=10.0, gt=0)
    """After the drain, how long requests in flight may take to finish before they are
    cancelled."""


class CostConfig(StrictModel):
    """What a backend's inference costs, for gateway_inference_cost_dollars_total and the cost
    gate."""

    model: Literal["wall_seconds", "cpu_seconds"] = "wall_seconds"
    """wall_seconds: each backend's cost_per_hour x the wall time of its live calls (hardware a
    backend has to itself). cpu_seconds: price_per_core_hour x the CPU time its live calls
    measured, so backends sharing a host are charged for what they use (in-process backends;
    a Triton backend stays on its cost_per_hour x wall time, since Triton reports no CPU time
    per model)."""
    price_per_core_hour: float = Field(default=0.04, ge=0)
    """Dollars per core-hour, for the cpu_seconds model."""


MIN_TOKEN_LENGTH = 16


def checked_secret(token: SecretStr | None, variable: str) -> SecretStr | None:
    """Stripped once, here: a secret from a file (``kubectl create secret --from-file``) ends
    with a newline that no client sends, and is checked and compared as stripped."""
    if token is None:
        return None
    stripped = token.get_secret_value().strip()
    if len(stripped) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"{variable} must be at least {MIN_TOKEN_LENGTH} characters (a short token can be "
            "guessed); make one with: openssl rand -hex 16"
        )
    return SecretStr(stripped)


class FeedbackConfig(StrictModel):
    ttl_seconds: float = Field(default=600.0, gt=0)
    """How long a prediction waits for its ground-truth label."""
    max_entries: int = Field(default=100_000, ge=1)
    """Predictions remembered at most; the oldest are forgotten first."""
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Memory the remembered predictions may take (ids, classes and bookkeeping), so long ids
    or big batches cannot grow it without bound; the oldest are forgotten first."""
    token: SecretStr | None = None
    """Bearer token of a trusted label pipeline, which may label any request
    (``DISTILL_GATEWAY_FEEDBACK__TOKEN``). Without it, a label must carry the
    ``x-feedback-ticket`` that its answer carried."""
    ticket_key: SecretStr | None = None
    """The key answers' tickets are signed with (``DISTILL_GATEWAY_FEEDBACK__TICKET_KEY``): give
    every replica of a fleet the same one. Default: derived from the admin token; without one, a
    random key per process (a ticket then verifies only on the replica that answered)."""
    open: bool = False
    """Take labels without a ticket or token: only where every client of the V2 port is trusted
    (anyone who can call it could label other people's requests and steer the accuracy gates)."""

    @field_validator("token")
    @classmethod
    def _token_is_long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        return checked_secret(token, "DISTILL_GATEWAY_FEEDBACK__TOKEN")

    @field_validator("ticket_key")
    @classmethod
    def _key_is_long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        return checked_secret(key, "DISTILL_GATEWAY_FEEDBACK__TICKET_KEY")


class ResilienceConfig(StrictModel):
    """How the gateway rides out a failing backend (a circuit breaker per backend)."""

    failure_threshold: int = Field(default=5, ge=1)
    """Failures (errors or timeouts) within ``window_seconds`` that open a backend's circuit."""
    window_seconds: float = Field(default=10.0, gt=0)
    cool_down_seconds: float = Field(default=5.0, gt=0)
    """How long an open circuit turns requests away before one probe is let through."""
    request_timeout_ms: float = Field(default=2000.0, gt=0)
    """The whole request's deadline: a student call and its retry on the teacher fit inside."""


class StateConfig(StrictModel):
    """Where the share, the replica registry and the predictions awaiting labels live."""

    url: str = "memory"
    """``memory``: this process alone (the default). ``redis://host:port/db`` (or ``rediss://``
    for TLS): a fleet of replicas sharing one rollout through Redis. Then the predictions
    awaiting labels are the fleet's, not each process's: ``feedback.ttl_seconds``,
    ``max_entries`` and ``max_bytes`` bound them in the store for every replica together (with
    ``memory``, each process has its own), they expire by Redis's clock (never a replica's),
    ``max_bytes`` charges what Redis spends on each (``3 x key + 2 x classes + backend + 343``
    bytes, the key ``<prefix>:<model>:p:<id>``, against
    about ``id + classes + 450`` in a process), and gateway_feedback_pending(_bytes) report the
    store's count on every replica (take the max over replicas, never the sum)."""
    username: str | None = None
    """Redis's ACL user (Redis 6+) when the URL names none (``DISTILL_GATEWAY_STATE__USERNAME``);
    none: Redis's ``default`` user. Anyone who can write the fleet's keys sets the share and the
    student as the admin API would: give the gateways a user of their own, limited to their key
    prefix (``deploy/kubernetes/redis.yaml``), and turn the default user off."""
    password: SecretStr | None = None
    """Redis's password (the user's, with ``username``) when the URL has none
    (``DISTILL_GATEWAY_STATE__PASSWORD``)."""
    advertise_url: str | None = None
    """The URL the controller reaches this replica's admin API at; default ``http://<host>:<port>``
    of the listener that serves it (``https`` with ``tls``; a wildcard host: this host's address;
    in Kubernetes: the pod IP)."""
    advertise_metrics_url: str | None = None
    """The URL of this replica's ``/metrics`` for the controller's scrape source, advertised in
    ``GET /admin/traffic`` (``metrics_url``) and in the fleet's registry. Default: when
    ``metrics.port`` puts ``/metrics`` on a listener apart from the admin API,
    ``http://<host>:<metrics port>/metrics`` of that listener (as ``advertise_url``); else none
    (``<admin URL>/metrics``). Set it when the controller reaches that port by another address."""
    replica_id: str | None = None
    """This replica's name in the registry; default ``<hostname>-<pid>``."""
    heartbeat_seconds: float = Field(default=1.0, gt=0, le=60)
    """How often a replica renews its registration (and re-reads the fleet's share, in case a
    published change was missed)."""
    replica_ttl_seconds: float = Field(default=5.0, gt=0, le=600)
    """A replica whose heartbeat is older than this is dropped from the registry."""
    timeout_ms: float = Field(default=500.0, gt=0)
    """One store operation slower than this counts as the store being unreachable. A request
    waits for its prediction's write (so that a label posted at once to another replica finds
    it) at most this long, and never past its own deadline (the write goes on without it)."""
    key_prefix: str = Field(default="distill-gateway", min_length=1, pattern=r"^[A-Za-z0-9_.:\-]+$")
    """Keys are ``<key_prefix>:<model>:...``, so fleets of several models can share one Redis."""

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if url != "memory" and not url.startswith(("redis://", "rediss://")):
            raise ValueError(
                f"must be 'memory' or a redis://host:port/db (rediss:// for TLS) URL, got {url!r}"
            )
        return url

    @model_validator(mode="after")
    def _username_in_the_url(self) -> StateConfig:
        """The user goes into the URL (``redis://user@host``), where every client of the store
        reads it; a URL that names a user keeps it."""
        scheme, found, rest = self.url.partition("://")
        if self.username and found and "@" not in rest.partition("/")[0]:
            self.url = f"{scheme}://{quote(self.username, safe='')}@{rest}"
        return self

    @model_validator(mode="after")
    def _ttl_outlives_heartbeats(self) -> StateConfig:
        if self.replica_ttl_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                "state.replica_ttl_seconds must be at least twice state.heartbeat_seconds, "
                "or live replicas flicker out of the fleet"
            )
        return self

    @property
    def shared(self) -> bool:
        return self.url != "memory"


def _default_teacher() -> OnnxBackendConfig:
    return OnnxBackendConfig(path=TEACHER_PATH, cost_per_hour=3.0)


def _default_student() -> OnnxBackendConfig:
    return OnnxBackendConfig(path=STUDENT_PATH, cost_per_hour=0.5)


MODEL_NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
"""A model's name is a URL path segment (``/v2/models/{name}``) and a Redis key part."""


RESERVED_MODEL_NAMES = ("stats",)
"""``/v2/models/stats`` is the statistics extension's route, not a model's."""


def _model_name(name: str) -> str:
    if name in (".", ".."):
        raise ValueError(f"'{name}' is not a model name: it is not a path segment a URL can carry")
    if name in RESERVED_MODEL_NAMES:
        raise ValueError(f"'{name}' is not a model name: /v2/models/{name} is a V2 route")
    return name


class ModelEntry(StrictModel):
    """One entry of ``models:``: a logical model the gateway serves beside others. Every key is
    optional but ``name``: an unset key takes the top-level value (the defaults); a section set
    here overrides the top-level section key by key, except ``teacher``, ``student``, ``task``,
    ``inputs`` and ``outputs``, which describe one model and replace it whole."""

    name: str = Field(min_length=1, pattern=MODEL_NAME_PATTERN)
    """The logical model name clients use in ``/v2/models/{name}``."""
    version: str | None = Field(default=None, min_length=1, pattern=MODEL_NAME_PATTERN)
    inputs: dict[str, InputConfig] | None = None
    outputs: dict[str, OutputConfig] | None = None
    warmup: WarmupConfig | None = None
    teacher: BackendConfig | None = None
    student: BackendConfig | None = None
    task: TaskConfig | None = None
    registry: Path | None = None
    traffic: TrafficConfig | None = None
    shadow: ShadowConfig | None = None
    drift: DriftConfig | None = None
    feedback: FeedbackConfig | None = None
    resilience: ResilienceConfig | None = None
    cost: CostConfig | None = None

    _checked_name = field_validator("name")(_model_name)


PER_MODEL_KEYS = tuple(key for key in ModelEntry.model_fields if key not in ("name", "version"))
"""The keys a ``models:`` entry may set; every other key is the gateway's, top-level only."""
REPLACED_WHOLE = ("inputs", "outputs", "teacher", "student", "task")
"""Sections an entry replaces whole rather than key by key (they describe one model)."""


class GatewaySettings(BaseSettings):
    """Everything the gateway reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="DISTILL_GATEWAY_", env_nested_delimiter="__", extra="forbid"
    )

    model: str = Field(default="digits", min_length=1, pattern=MODEL_NAME_PATTERN)
    """The logical model name clients use in ``/v2/models/{model}`` (without ``models:``)."""

    _checked_model = field_validator("model")(_model_name)
    model_version: str = Field(default="1", min_length=1, pattern=MODEL_NAME_PATTERN)
    """The logical model's one version (``/v2/models/{model}/versions/{version}``). It names the
    model clients see, not the backend that serves them, so it stays the same while a rollout
    moves traffic and a client that pins it keeps working."""
    inputs: dict[str, InputConfig] = Field(default_factory=dict)
    """Per input, by name: a maximum for its dynamic axes, its pad value, its warm-up range.
    A name the model does not have fails start-up."""
    outputs: dict[str, OutputConfig] = Field(default_factory=dict)
    """Per output, by name: the input axes it carries, for padded batching (a name the model
    does not have fails start-up with ``batching.pad``)."""
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    """How both backends warm up before serving (and a student swapped in at run time)."""
    teacher: BackendConfig = Field(default_factory=_default_teacher)
    student: BackendConfig = Field(default_factory=_default_student)
    task: TaskConfig = Field(default_factory=ClassificationTask)
    """What the model's answers are (``classification``, ``multilabel``, ``regression``,
    ``embedding``; ``gateway.task_config``): what the shadow compares and what a label is."""
    registry: Path = REGISTRY_PATH
    """The model registry ``PUT /admin/student`` looks ids up in (``distill-models sweep`` writes
    it); relative to the config file, as a model's ``path`` is (not to the working directory),
    and its files are relative to it."""
    traffic: TrafficConfig = Field(default_factory=TrafficConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    """Input and output distribution summaries for drift detection (``gateway.drift``)."""
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    overload: OverloadConfig = Field(default_factory=OverloadConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    """memory (one process) or Redis (a fleet of replicas, or ``--workers``)."""
    admin: ListenerConfig = Field(default_factory=ListenerConfig)
    """``PUT``/``GET /admin/traffic`` on a port of its own (for the controller only)."""
    metrics: ListenerConfig = Field(default_factory=ListenerConfig)
    """``/metrics`` on a port of its own (for Prometheus only); may be the admin port."""
    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    tls: ServerTlsConfig = Field(default_factory=ServerTlsConfig)
    """HTTPS and gRPC over TLS on every listener; off by default (plain, for a mesh or a
    terminating proxy to secure)."""
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Larger request bodies are refused with 413."""
    max_batch_size: int = Field(default=1024, ge=1)
    """Larger batches are refused with 400."""
    models: list[ModelEntry] | None = Field(default=None, min_length=1)
    """Several logical models behind this gateway, each with its own backends, share, rollout,
    admission, breakers and metrics (``model`` label). Unset: the top-level keys are the one
    model. Set: the top-level per-model keys (``PER_MODEL_KEYS``) are every entry's defaults."""
    admin_token: SecretStr | None = None
    """Bearer token for ``PUT /admin/traffic``; from ``DISTILL_GATEWAY_ADMIN_TOKEN`` only, at least
    ``MIN_TOKEN_LENGTH`` characters (``openssl rand -hex 16`` makes a good one)."""

    @field_validator("admin_token")
    @classmethod
    def _token_is_long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        return checked_secret(token, "DISTILL_GATEWAY_ADMIN_TOKEN")

    _served: list[GatewaySettings] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _names_are_unique(self) -> GatewaySettings:
        names = [entry.name for entry in self.models or ()]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"models: the name {', '.join(map(repr, repeated))} is given to "
                             "more than one entry; each model needs a name of its own")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _student_leaves_time_to_fall_back(self) -> GatewaySettings:
        if self.models is None:
            _check_student_timeout(self)
        else:
            for index, entry in enumerate(self.models):
                try:
                    _check_student_timeout(self._merged(entry))
                except ValueError as exc:
                    raise ValueError(f"models.{index} ({entry.name}): {exc}") from exc
        return self

    def served(self) -> list[GatewaySettings]:
        """One settings object per model served, in the config's order: the top-level keys with
        its ``models:`` entry merged over them (the gateway-wide keys are the same in each)."""
        if self._served is None:
            entries = self.models
            self._served = [self] if entries is None else [self._merged(e) for e in entries]
        return self._served

    def _merged(self, entry: ModelEntry) -> GatewaySettings:
        update: dict[str, Any] = {"model": entry.name, "models": None}
        if entry.version is not None:
            update["model_version"] = entry.version
        for key in entry.model_fields_set & set(PER_MODEL_KEYS):
            given, default = getattr(entry, key), getattr(self, key)
            if key in REPLACED_WHOLE or not isinstance(given, StrictModel):
                update[key] = given
            else:  # key by key over the default, checked again as a whole
                fields = {
                    **default.__dict__,
                    **{k: given.__dict__[k] for k in given.model_fields_set},
                }
                update[key] = type(given).model_validate(fields)
        return self.model_copy(update=update)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it.
        return env_settings, init_settings


def _check_student_timeout(settings: GatewaySettings) -> None:
    deadline = settings.resilience.request_timeout_ms
    if settings.student.timeout_ms >= deadline:
        raise ValueError(
            f"student.timeout_ms ({settings.student.timeout_ms:g}) must be below "
            f"resilience.request_timeout_ms ({deadline:g}): a student that times out must "
            "leave the request time to be answered by the teacher"
        )


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key."""


def load_settings(path: Path | None) -> GatewaySettings:
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(path, "config", ConfigError)
        if "admin_token" in data:
            raise ConfigError(
                f"{path}: admin_token: not allowed in a file; "
                "set DISTILL_GATEWAY_ADMIN_TOKEN instead"
            )
        entries = data.get("models")
        sections = [("", data)] + [(f"models.{i}.", entry) for i, entry in
                                   enumerate(entries if isinstance(entries, list) else ())
                                   if isinstance(entry, dict)]  # fmt: skip
        for where, section in sections:
            feedback = section.get("feedback")
            for secret in ("token", "ticket_key"):
                if isinstance(feedback, dict) and secret in feedback:
                    variable = f"DISTILL_GATEWAY_FEEDBACK__{secret.upper()}"
                    raise ConfigError(f"{path}: {where}feedback.{secret}: not allowed in a file; "
                                      f"set {variable} instead")  # fmt: skip
    try:
        settings = GatewaySettings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
    several = settings.models is not None
    for served in settings.served():
        _resolve_paths(served, path, f"models ({served.model}): " if several else "")
    return settings


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f"{path}: " if path else ""
    # pydantic puts the backend's and the task's union tags in the path; users never wrote them
    hidden = (*BACKEND_KINDS, *TASK_KINDS)
    return where + "invalid config: " + describe_errors(exc, hidden=hidden, limit=10)


def _resolve_paths(settings: GatewaySettings, config: Path | None, entry: str) -> None:
    """Relative model paths are relative to the config file; missing files fail here."""
    base = config.parent if config else Path.cwd()
    where = f"{config}: " if config else ""
    for role in ROLES:
        backend = getattr(settings, role)
        if not isinstance(backend, OnnxBackendConfig):
            continue
        if not backend.path.is_absolute():
            backend.path = (base / backend.path).resolve()
        if not backend.path.is_file():
            raise ConfigError(f"{where}{entry}{role}.path: no such file: {backend.path}")
    if not settings.registry.is_absolute():
        settings.registry = (base / settings.registry).resolve()
    tls = settings.tls
    for key in ("certfile", "keyfile"):
        path: Path | None = getattr(tls, key)
        if path is None:
            continue
        path = path if path.is_absolute() else (base / path).resolve()
        if not path.is_file():
            raise ConfigError(f"{where}tls.{key}: no such file: {path}")
        setattr(tls, key, path)
