"""Open Inference Protocol (KServe V2) request types, validated by pydantic.

Tensor ``data`` is kept as parsed JSON here and turned into numpy by ``gateway.codec``, which knows
the model's signature.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt


class _V2(BaseModel):
    # Clients may send fields from other extensions; ignoring them is what Triton does.
    model_config = ConfigDict(extra="ignore")


class TensorParameters(_V2):
    binary_data_size: StrictInt | None = Field(default=None, ge=0)


class OutputParameters(_V2):
    binary_data: StrictBool | None = None


class RequestParameters(_V2):
    binary_data_output: StrictBool = False


class RequestInput(_V2):
    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: TensorParameters | None = None
    data: list[Any] | None = None


class RequestOutput(_V2):
    name: str
    parameters: OutputParameters | None = None


class InferenceRequest(_V2):
    id: str | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class TrafficUpdate(BaseModel):
    """Body of ``PUT /admin/traffic``."""

    model_config = ConfigDict(extra="forbid")
    student_share: float = Field(ge=0.0, le=1.0)


class Feedback(BaseModel):
    """Body of ``POST /v2/models/{model}/feedback``: the true label(s) of an earlier request.

    ``label`` is one class for a batch of one, or one class per row for a larger batch.
    """

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    label: StrictInt | list[StrictInt]
