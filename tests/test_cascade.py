"""The cascade through a real gateway (issue 33): the shipped digits pair behind it, requests
through tritonclient's gRPC stubs and httpx over HTTP. A request escalates exactly when the
student's top softmax probability, computed from ONNX Runtime's own answer on the same input, is
below the threshold; the answer, its headers and metadata, the metrics and the labels say so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from gateway import metric_names as names
from gateway.thresholds import ThresholdSelector
from models.data import Split
from models.text import TEXT_STUDENT_PATH, TEXT_TEACHER_PATH, TEXT_TEST_SPLIT_PATH
from models.text.data import load_test_split
from tests import model_shapes
from tests.model_shapes import run_onnx
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
    # and the cascade's own accuracy: one labelled row of an escalated request, right
    assert gateway.metric(names.CASCADE_FEEDBACK, model="digits", escalated="true") == 1
    assert gateway.metric(names.CASCADE_FEEDBACK_CORRECT, model="digits", escalated="true") == 1
    assert gateway.metric(names.CASCADE_FEEDBACK, model="digits", escalated="false") == 0


def test_the_admin_api_shows_the_cascade(cascade_gateway: tuple[TestGateway, str]) -> None:
    gateway, _ = cascade_gateway
    # no token: the open read shows the cascade (README: the admin API)
    state = httpx.get(f"{gateway.url}/admin/traffic", timeout=10).json()
    assert state["mode"] == "cascade"
    assert state["cascade"]["threshold"] == THRESHOLD and state["cascade"]["source"] == "fixed"


def test_a_threshold_chosen_from_data_is_the_one_the_evidence_gives(
    start_gateway: Callable[..., TestGateway], test_split: Split, teacher_direct: Model,
    student_direct: Model,
) -> None:  # fmt: skip
    """Until the first look, every request escalates (no min_confidence); each escalated request
    is evidence (both answers known). At 100 the gateway chooses exactly what the selector
    chooses from ONNX Runtime's answers on the same rows, and stops escalating sure requests."""
    config = {"max_disagreement": 0.05, "confidence_level": 0.9, "min_samples": 100}
    gateway = start_gateway({
        "traffic": {"student_share": 1.0, "mode": "cascade", "cascade": config},
        "shadow": {"sample_rate": 1.0, "max_delay_ms": 0},
    })  # fmt: skip
    x = test_split.x[:100]
    teacher, student = teacher_direct(x), student_direct(x)
    expected = ThresholdSelector(0.05, 0.9, 0.01, 100)
    for top, agreed in zip(_softmax(student).max(axis=1),
                           teacher.argmax(1) == student.argmax(1), strict=True):  # fmt: skip
        expected.observe(float(top), bool(agreed))
    assert expected.choice is not None and expected.choice.threshold is not None
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for n, row in enumerate(x):
            body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                "data": row.tolist()}]}  # fmt: skip
            answer = client.post("/v2/models/digits/infer", json=body)
            assert answer.headers["x-escalated"] == "true", n  # threshold 1.0 until the look
        # the look at 100 waits for the last shadow call, which answers after its request did
        wait_until(
            lambda: client.get("/admin/traffic").json()["cascade"]["source"] == "chosen",
            timeout=10,
            what="the threshold chosen from 100 shadowed requests",
        )
        state = client.get("/admin/traffic").json()["cascade"]
        assert state["threshold"] == expected.choice.threshold
        evidence = state["evidence"]
        assert evidence["samples"] == 100
        assert evidence["disagreements"] == expected.choice.disagreements
        assert evidence["upper_bound"] == pytest.approx(expected.choice.upper_bound)
        assert evidence["upper_bound"] <= 0.05
        sure = int(np.flatnonzero(_softmax(student).max(axis=1) >= state["threshold"])[0])
        body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                            "data": x[sure].tolist()}]}  # fmt: skip
        answer = client.post("/v2/models/digits/infer", json=body)
        assert answer.headers["x-served-by"] == "student" and "x-escalated" not in answer.headers
    assert gateway.metric(names.CASCADE_THRESHOLD, model="digits") == state["threshold"]
    assert gateway.metric(names.CASCADE_THRESHOLD_SOURCE, model="digits", source="chosen") == 1
    assert gateway.metric(names.CASCADE_CALIBRATION_SAMPLES, model="digits") == 100


def test_the_text_pair_escalates_by_margin_exactly_where_onnx_runtime_says(
    start_gateway: Callable[..., TestGateway],
) -> None:
    """Another signature (two INT64 inputs of a dynamic length, four classes) and the margin."""
    split = load_test_split(TEXT_TEST_SPLIT_PATH)
    rows = slice(0, 80)
    inputs = {name: array[rows] for name, array in split.inputs().items()}
    student = run_onnx(TEXT_STUDENT_PATH, inputs)["logits"]
    teacher = run_onnx(TEXT_TEACHER_PATH, inputs)["logits"]
    ranked = np.sort(_softmax(student), axis=1)
    unsure = ranked[:, -1] - ranked[:, -2] < 0.99
    assert 0 < unsure.sum() < len(unsure)
    gateway = start_gateway({
        "model": "text",
        "teacher": {"path": str(TEXT_TEACHER_PATH)},
        "student": {"path": str(TEXT_STUDENT_PATH)},
        "inputs": {"input_ids": {"warmup_range": [0, 31]},
                   "attention_mask": {"warmup_range": [1, 1]}},
        "traffic": {"student_share": 1.0, "mode": "cascade",
                    "cascade": {"confidence": "margin", "min_confidence": 0.99}},
        "shadow": {"sample_rate": 0.0},
    })  # fmt: skip
    escalated, answers = [], []
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for n in range(len(unsure)):
            length = int(inputs["attention_mask"][n].sum())  # each row at its own length
            body = {"inputs": [{"name": name, "shape": [1, length], "datatype": "INT64",
                                "data": inputs[name][n, :length].tolist()}
                               for name in ("input_ids", "attention_mask")]}  # fmt: skip
            answer = client.post("/v2/models/text/infer", json=body)
            assert answer.status_code == 200, answer.text
            escalated.append(answer.headers.get("x-escalated") == "true")
            answers.append(answer.json()["outputs"][0]["data"])
    assert escalated == unsure.tolist()
    expected = np.where(unsure[:, None], teacher, student)
    np.testing.assert_allclose(np.asarray(answers), expected, rtol=1e-4, atol=1e-5)
    assert gateway.metric(names.CASCADE_REQUESTS, model="text", escalated="true") == unsure.sum()


def test_a_task_without_a_confidence_refuses_the_cascade_at_start(
    start_gateway: Callable[..., TestGateway], tmp_path: Path,
) -> None:  # fmt: skip
    teacher = model_shapes.write_regression_model(tmp_path / "teacher.onnx", seed=0)
    student = model_shapes.write_regression_model(tmp_path / "student.onnx", seed=1)
    with pytest.raises(RuntimeError, match="task regression has no confidence"):
        start_gateway({
            "model": "numbers", "task": "regression",
            "teacher": {"path": str(teacher)}, "student": {"path": str(student)},
            "traffic": {"mode": "cascade", "cascade": {"min_confidence": 0.9}},
        })  # fmt: skip


def test_the_shadow_compares_the_cascades_answers_with_the_teachers_whoever_served_them(
    start_gateway: Callable[..., TestGateway], test_split: Split, teacher_direct: Model,
    student_direct: Model,
) -> None:  # fmt: skip
    """Half the requests go through the cascade, half straight to the teacher, every one
    shadowed: the agreement the controller's gate reads counts what the cascade answers (the
    student's answer where it is sure, the teacher's where not), whichever way a request went,
    so it equals ONNX Runtime's count on the same rows exactly."""
    threshold = 0.5  # low enough that the cascade answers a few rows unlike the teacher
    gateway = start_gateway({
        "traffic": {"student_share": 0.5, "seed": 3, "mode": "cascade",
                    "cascade": {"min_confidence": threshold}},
        "shadow": {"sample_rate": 1.0, "max_delay_ms": 0},
    })  # fmt: skip
    x = test_split.x
    teacher, student = teacher_direct(x).argmax(1), student_direct(x).argmax(1)
    sure = _softmax(student_direct(x)).max(axis=1) >= threshold
    disagreeing = int((sure & (teacher != student)).sum())
    assert disagreeing > 0
    served = []
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for row in x:
            body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                "data": row.tolist()}]}  # fmt: skip
            answer = client.post("/v2/models/digits/infer", json=body)
            served.append(answer.headers.get("x-escalated", answer.headers["x-served-by"]))
    assert {"student", "teacher", "true"} <= set(served)  # every path was taken
    wait_until(lambda: gateway.metric(names.SHADOW_COMPARISONS, model="digits") == len(x),
               timeout=30, what="every request's comparison")  # fmt: skip
    assert gateway.metric(names.SHADOW_AGREEMENTS, model="digits") == len(x) - disagreeing
