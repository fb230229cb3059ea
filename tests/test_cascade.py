"""The cascade through a real gateway (issue 33): the shipped digits pair behind it, requests
through tritonclient's gRPC stubs and httpx over HTTP. A request escalates exactly when the
student's top softmax probability, computed from ONNX Runtime's own answer on the same input, is
below the threshold; the answer, its headers and metadata, the metrics and the labels say so."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from gateway import metric_names as names
from models.data import Split
from tests.servers import LABELLER, TestGateway, free_port, wait_until

pytestmark = pytest.mark.e2e
Model = Callable[[np.ndarray], np.ndarray]
THRESHOLD = 0.9


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p: np.ndarray = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return p


def _grpc_request(x: np.ndarray, request_id: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits", id=request_id)
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=list(x.shape))
    del tensor
    request.raw_input_contents.append(x.astype(np.float32).tobytes())
    return request


@pytest.fixture(scope="module")
def cascade_gateway(start_gateway: Callable[..., TestGateway]) -> tuple[TestGateway, str]:
    port = free_port()
    gateway = start_gateway({
        "traffic": {"student_share": 1.0, "mode": "cascade",
                    "cascade": {"min_confidence": THRESHOLD}},
        "shadow": {"sample_rate": 0.0},
        "grpc": {"port": port},
    })  # fmt: skip
    return gateway, f"127.0.0.1:{port}"


def test_escalation_happens_exactly_below_the_threshold_over_http_and_grpc(
    cascade_gateway: tuple[TestGateway, str], test_split: Split, teacher_direct: Model,
    student_direct: Model,
) -> None:  # fmt: skip
    gateway, address = cascade_gateway
    x = test_split.x[:120]
    top = _softmax(student_direct(x)).max(axis=1)
    unsure = top < THRESHOLD
    assert np.abs(top - THRESHOLD).min() > 1e-6  # no row a rounding away from the threshold
    assert 0 < unsure.sum() < len(x) // 2  # both paths are taken
    teacher, student = teacher_direct(x), student_direct(x)
    served, escalated, answers = [], [], []
    with httpx.Client(base_url=gateway.url, timeout=10) as client, \
            grpc.insecure_channel(address) as channel:  # fmt: skip
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for n, row in enumerate(x):
            if n % 2:
                response, call = stub.ModelInfer.with_call(_grpc_request(row[None], f"g{n}"))
                metadata = dict(call.initial_metadata())
                served.append(metadata["x-served-by"])
                escalated.append(metadata.get("x-escalated") == "true")
                answers.append(np.frombuffer(response.raw_output_contents[0], np.float32))
            else:
                body = {
                    "id": f"h{n}",
                    "inputs": [
                        {
                            "name": "pixels",
                            "shape": [1, 64],
                            "datatype": "FP32",
                            "data": row.tolist(),
                        }
                    ],
                }
                answer = client.post("/v2/models/digits/infer", json=body)
                assert answer.status_code == 200, answer.text
                served.append(answer.headers["x-served-by"])
                escalated.append(answer.headers.get("x-escalated") == "true")
                answers.append(np.asarray(answer.json()["outputs"][0]["data"], np.float32))
    assert escalated == unsure.tolist()
    assert served == ["teacher" if u else "student" for u in unsure]
    expected = np.where(unsure[:, None], teacher, student)
    np.testing.assert_allclose(np.stack(answers), expected, rtol=1e-5, atol=1e-5)
    assert gateway.metric(names.CASCADE_REQUESTS, model="digits", escalated="true") == unsure.sum()
    assert gateway.metric(names.CASCADE_REQUESTS, model="digits",
                          escalated="false") == len(x) - unsure.sum()  # fmt: skip
    assert gateway.metric(names.CASCADE_THRESHOLD, model="digits") == THRESHOLD
    # an escalated request pays both calls: every escalated one is slower than the fastest
    escalated_sum = gateway.metric(names.CASCADE_DURATION + "_sum", model="digits",
                                   escalated="true")  # fmt: skip
    assert escalated_sum > 0


def test_a_label_for_an_escalated_request_scores_the_teachers_answer_and_the_students_paired(
    cascade_gateway: tuple[TestGateway, str], test_split: Split, teacher_direct: Model,
    student_direct: Model,
) -> None:  # fmt: skip
    gateway, _ = cascade_gateway
    x, y = test_split.x, test_split.y
    top = _softmax(student_direct(x)).max(axis=1)
    teacher_class, student_class = teacher_direct(x).argmax(1), student_direct(x).argmax(1)
    # an unsure row where the two disagree and the teacher is right: the label tells them apart
    candidates = np.flatnonzero((top < THRESHOLD) & (teacher_class != student_class)
                                & (teacher_class == y))  # fmt: skip
    assert len(candidates), "the test split has such a row"
    row = int(candidates[0])
    label = int(y[row])
    before = {backend: gateway.total(names.FEEDBACK_CORRECT, model="digits", backend=backend)
              for backend in ("teacher", "student")}  # fmt: skip
    teacher_only = gateway.total(names.FEEDBACK_PAIRED, model="digits", outcome="teacher_only")
    body = {"id": "labelled", "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                          "data": x[row].tolist()}]}  # fmt: skip
    answer = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=body, timeout=10)
    assert answer.headers["x-served-by"] == "teacher" and answer.headers["x-escalated"] == "true"
    scored = httpx.post(f"{gateway.url}/v2/models/digits/feedback", headers=LABELLER,
                        json={"id": "labelled", "label": [label]}, timeout=10)  # fmt: skip
    assert scored.status_code == 200, scored.text
    assert scored.json()["backend"] == "teacher"
    wait_until(lambda: gateway.total(names.FEEDBACK_PAIRED, model="digits",
                                     outcome="teacher_only") == teacher_only + 1,
               timeout=10, what="the paired outcome")  # fmt: skip
    after = {backend: gateway.total(names.FEEDBACK_CORRECT, model="digits", backend=backend)
             for backend in ("teacher", "student")}  # fmt: skip
    assert after == {"teacher": before["teacher"] + 1, "student": before["student"]}


def test_the_admin_api_shows_the_cascade(cascade_gateway: tuple[TestGateway, str]) -> None:
    gateway, _ = cascade_gateway
    # no token: the open read shows the cascade (README: the admin API)
    state = httpx.get(f"{gateway.url}/admin/traffic", timeout=10).json()
    assert state["mode"] == "cascade"
    assert state["cascade"]["threshold"] == THRESHOLD and state["cascade"]["source"] == "fixed"
