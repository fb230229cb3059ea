"""Open Inference Protocol (KServe V2) request types, validated by pydantic.

Tensor ``data`` is kept as parsed JSON here and turned into numpy by ``gateway.codec``, which knows
the model's signature.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    model_validator,
)

from gateway.validation import StrictModel


class _V2(BaseModel):
    # Clients may send fields from other extensions; ignoring them is what Triton does.
    model_config = ConfigDict(extra="ignore")


class TensorParameters(_V2):
    binary_data_size: StrictInt | None = Field(default=None, ge=0)


class OutputParameters(_V2):
    binary_data: StrictBool | None = None


class RequestParameters(_V2):
    binary_data_output: StrictBool = False
    timeout: StrictInt | None = Field(default=None, ge=0)
    """The client's deadline in microseconds, as Triton takes it (tritonclient's ``timeout``): the
    gateway never starts the request after it, and sheds it rather than queue past it."""


class RequestInput(_V2):
    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: TensorParameters | None = None
    data: list[Any] | None = None


class RequestOutput(_V2):
    name: str
    parameters: OutputParameters | None = None


MAX_ID_LENGTH = 256  # request ids are kept until their label arrives: bounded
ID_PATTERN = r"^[ -~]*$"
"""Printable ASCII: the id is echoed in the x-request-id header (and gRPC metadata), where a
control character cannot go."""


class InferenceRequest(_V2):
    id: str | None = Field(default=None, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


MODELS = "/v2/models"
"""``GET``: the models served, {"models": [...]} (a ``ModelListEntry`` each)."""
ADMIN_MODEL_TRAFFIC = "/admin/models/{model}/traffic"
"""``GET`` a model's share (what ``TrafficState`` says), ``PUT`` it (a ``TrafficUpdate``)."""
ADMIN_MODEL_STUDENT = "/admin/models/{model}/student"
"""``PUT`` a registry id as the model's student (a ``StudentUpdate``)."""
ADMIN_MODEL_SHADOW = "/admin/models/{model}/shadow"
"""``GET`` the model's shadow sample rate, ``PUT`` it (a ``ShadowRate``), on this replica: what a
post-promotion watch samples to the teacher. Not shared through a fleet's store, and not kept
across a restart (the config's ``shadow.sample_rate`` again): the watch sets it on every replica."""


class ShadowRate(StrictModel):
    """Body of ``PUT /admin/models/{model}/shadow`` and what it and ``GET`` answer."""

    model: str | None = None
    sample_rate: float = Field(ge=0.0, le=1.0)
    configured: float | None = None
    """In answers: the config's ``shadow.sample_rate``, what a watch puts back when it ends (a
    watch restarted after a crash reads its own rate as the current one)."""


class ModelListEntry(StrictModel):
    """One model in ``GET /v2/models``."""

    name: str
    versions: list[str]
    ready: bool
    student_id: str | None = None


class RepositoryIndexRequest(StrictModel):
    """Body of ``POST /v2/repository/index`` (may be empty): ``ready`` lists only ready ones."""

    ready: bool = False


class RepositoryIndexEntry(StrictModel):
    """One model in the repository index, in Triton's shape."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = ""


class TrafficUpdate(StrictModel):
    """Body of ``PUT /admin/traffic``."""

    student_share: float = Field(ge=0.0, le=1.0)


class StudentUpdate(StrictModel):
    """Body of ``PUT /admin/student``: a model registry id (``distill-models select`` prints
    one)."""

    model_id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")


class FleetTraffic(StrictModel):
    student_share: float
    generation: int
    student_id: str | None = None
    """The registry id the store says every replica serves, once one was set."""


class TrafficState(StrictModel):
    """What ``GET`` and ``PUT /admin/traffic`` answer: the share and its generation, which every
    change increments (the controller reads both back to confirm its own change). Read with
    extra keys ignored: a controller reads gateways of the next version too, which may say more
    (the other way round, the unnamed routes answer without ``model``, as before it existed)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    """The logical model this is the traffic of."""
    student_share: float
    generation: int
    student_id: str | None = None
    """The registry id of the student this gateway serves (None for a student on Triton)."""
    student_error: str | None = None
    """In a fleet: why the fleet's student could not be loaded here."""
    fleet: FleetTraffic | None = None
    """In a fleet (state.url redis): the share and generation the store holds, last read."""
    replica_id: str | None = None
    """In a fleet: this replica's id in the registry."""
    replicas: int | None = None
    """In a fleet: live replicas, as this one last read the registry."""
    metrics_url: str | None = None
    """Where this gateway's ``/metrics`` is, when it is not beside the admin API (``metrics.port``
    apart from ``admin.port``): the controller's scrape source reads it there."""
    mode: str | None = None
    """``traffic.mode: cascade`` (absent in split mode): the share is the fraction of requests
    that goes through the cascade."""
    cascade: dict[str, Any] | None = None
    """In cascade mode: the threshold in use, where it comes from, and the evidence behind a
    chosen one (``gateway.cascade.Cascade.status``)."""


class Feedback(StrictModel):
    """Body of ``POST /v2/models/{model}/feedback``: the true label(s) of an earlier request.

    ``label`` is what the model's task takes (``gateway.feedback``'s ``LabelRules``): a class
    per row (classification: ``3``, ``[3, 7]``), one 0/1 per label of each row (multilabel:
    ``[0, 1, 1]``), a number per output element of each row (regression: ``2.5``, ``[2.5, 0.1]``);
    an embedding takes none. Its type is checked against the task there (a 400 naming the task).
    """

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    label: Any
    ticket: str | None = Field(default=None, max_length=128)
    """The answer's ``x-feedback-ticket``, when not sent as that header."""

    @model_validator(mode="before")
    @classmethod
    def _one_key_for_both_forms(cls, data: Any) -> Any:
        if isinstance(data, dict) and "labels" in data and "label" not in data:
            raise ValueError("the key is 'label' for one row or many (label: [3, 7] gives one "
                             "per row, in row order), not 'labels'")  # fmt: skip
        return data
