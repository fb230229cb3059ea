"""Who may label a request, against a real gateway (the trust issue's item 1): ids the gateway
makes up cannot be guessed, and a label needs the ticket its answer carried (HTTP header or
gRPC metadata) or the label pipeline's feedback token; a stranger's label for someone else's
request is refused and the real one still counts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from gateway.config import ConfigError, load_settings
from tests.servers import LABELLER, TestGateway, free_port

pytestmark = pytest.mark.e2e

BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def test_made_up_ids_are_128_random_bits_not_a_counter(gateway: TestGateway) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        ids = [client.post("/v2/models/digits/infer", json=BODY).headers["x-request-id"]
               for _ in range(20)]  # fmt: skip
    assert all(len(each) == 32 and int(each, 16) >= 0 for each in ids)
    # a per-process prefix and a counter shared their first 16 digits; 128 random bits do not
    assert len({each[:16] for each in ids}) == 20


def test_a_label_needs_its_answers_ticket_and_a_strangers_label_is_refused(
    gateway: TestGateway,
) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        mine = client.post("/v2/models/digits/infer", json=BODY)
        theirs = client.post("/v2/models/digits/infer", json=BODY)
        my_id, my_ticket = mine.headers["x-request-id"], mine.headers["x-feedback-ticket"]
        assert len(my_ticket) == 32

        def label(headers: dict[str, str], body_ticket: str | None = None) -> httpx.Response:
            body: dict[str, object] = {"id": my_id, "label": 3}
            if body_ticket is not None:
                body["ticket"] = body_ticket
            return client.post("/v2/models/digits/feedback", json=body, headers=headers)

        unsigned = label({})
        assert unsigned.status_code == 401 and "x-feedback-ticket" in unsigned.json()["error"]
        stolen = label({"x-feedback-ticket": theirs.headers["x-feedback-ticket"]})
        assert stolen.status_code == 403
        assert label({"Authorization": "Bearer not-the-token"}).status_code == 403
        answered = label({}, body_ticket=my_ticket)  # in the body works as in the header
        assert answered.status_code == 200 and answered.json()["id"] == my_id
        # the pipeline's token labels a request it did not send
        other = client.post("/v2/models/digits/feedback", headers=LABELLER,
                            json={"id": theirs.headers["x-request-id"], "label": 3})  # fmt: skip
        assert other.status_code == 200


def test_a_grpc_answer_carries_its_ticket_in_the_metadata(
    start_gateway: Callable[..., TestGateway],
) -> None:
    port = free_port()
    gateway = start_gateway({"shadow": {"sample_rate": 0.0}, "grpc": {"port": port}})
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="digits")
        tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
        tensor.contents.fp32_contents.extend([0.0] * 64)
        answer, call = stub.ModelInfer.with_call(request)
    metadata = dict(call.initial_metadata())
    scored = httpx.post(f"{gateway.url}/v2/models/digits/feedback",
                        json={"id": answer.id, "label": 3},
                        headers={"x-feedback-ticket": metadata["x-feedback-ticket"]})  # fmt: skip
    assert scored.status_code == 200, scored.text


def test_feedback_secrets_are_refused_in_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("feedback:\n  token: in-the-open\n")
    with pytest.raises(ConfigError, match="DISTILL_GATEWAY_FEEDBACK__TOKEN"):
        load_settings(config)
