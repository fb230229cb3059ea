"""Several models behind one real gateway process (issue 27): the digits pair and the text pair
(a BERT-shaped encoder taking two integer inputs) side by side, answered as ONNX Runtime answers
them, through tritonclient over HTTP and gRPC; the repository index; one model's share moved
without the other's; a fleet through a real Redis whose replicas serve different subsets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import yaml

from controller.fleet_store import StoreFleet
from models import REGISTRY_PATH, STUDENT_PATH, TEACHER_PATH
from models import registry as reg
from models.text import (
    TEXT_GATEWAY_CONFIG_PATH,
    TEXT_STUDENT_PATH,
    TEXT_TEACHER_PATH,
    TEXT_TEST_SPLIT_PATH,
)
from models.text.data import load_test_split
from tests.servers import ADMIN_TOKEN, RedisFleet, TestGateway, wait_until

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def digits_entry() -> dict[str, Any]:
    return {"name": "digits", "teacher": {"path": str(TEACHER_PATH)},
            "student": {"path": str(STUDENT_PATH)}}  # fmt: skip


def text_entry() -> dict[str, Any]:
    """The text pair as its own gateway.yaml configures it, as a ``models:`` entry."""
    shipped = yaml.safe_load(TEXT_GATEWAY_CONFIG_PATH.read_text())
    return {"name": "text", "teacher": {"path": str(TEXT_TEACHER_PATH)},
            "student": {"path": str(TEXT_STUDENT_PATH)}, "inputs": shipped["inputs"]}  # fmt: skip


def both(**top_level: Any) -> dict[str, Any]:
    return {"shadow": {"sample_rate": 0.0}, "models": [digits_entry(), text_entry()], **top_level}


@pytest.fixture(scope="module")
def two_model_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestGateway]:
    gateway = TestGateway(tmp_path_factory.mktemp("two-models"), both(), grpc=True).start()
    yield gateway
    gateway.stop()


def text_rows(count: int) -> dict[str, np.ndarray]:
    split = load_test_split(TEXT_TEST_SPLIT_PATH)
    return {"input_ids": split.input_ids[:count], "attention_mask": split.attention_mask[:count]}


def onnx_answer(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, inputs)[0])


def test_both_pairs_answer_as_onnx_runtime_over_http_and_grpc(
    two_model_gateway: TestGateway,
) -> None:
    digits = {"pixels": np.random.default_rng(7).uniform(0, 16, (5, 64)).astype(np.float32)}
    text = text_rows(5)
    expected = {"digits": onnx_answer(TEACHER_PATH, digits),
                "text": onnx_answer(TEXT_TEACHER_PATH, text)}  # fmt: skip
    http = triton_http.InferenceServerClient(two_model_gateway.address)
    grpc = triton_grpc.InferenceServerClient(str(two_model_gateway.grpc_address))
    for model, inputs in (("digits", digits), ("text", text)):
        for client, module in ((http, triton_http), (grpc, triton_grpc)):
            tensors = []
            for name, array in inputs.items():
                datatype = "FP32" if array.dtype == np.float32 else "INT64"
                tensor = module.InferInput(name, list(array.shape), datatype)
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
            result = client.infer(model, tensors)
            output = client.get_model_metadata(model)
            name = (output["outputs"][0]["name"] if isinstance(output, dict)
                    else output.outputs[0].name)  # fmt: skip
            np.testing.assert_allclose(result.as_numpy(name), expected[model], rtol=1e-4,
                                       atol=1e-5)  # fmt: skip
    assert http.is_model_ready("text") and grpc.is_model_ready("digits")
    assert [m["name"] for m in http.get_model_repository_index()] == ["digits", "text"]
    grpc_index = grpc.get_model_repository_index(as_json=True)["models"]
    assert [(m["name"], m["state"]) for m in grpc_index] == [("digits", "READY"),
                                                             ("text", "READY")]  # fmt: skip
    # a text request sent to digits is digits' 400, naming digits' input
    with pytest.raises(triton_http.InferenceServerException, match="pixels"):
        tensor = triton_http.InferInput("input_ids", [1, 4], "INT64")
        tensor.set_data_from_numpy(np.zeros((1, 4), np.int64))
        http.infer("digits", [tensor])
    http.close()
    grpc.close()


def test_one_models_share_moves_and_the_others_does_not(two_model_gateway: TestGateway) -> None:
    url = two_model_gateway.url
    try:
        assert two_model_gateway.set_share(1.0, model="text")["model"] == "text"
        body = {"inputs": [
            {"name": name, "datatype": "INT64", "shape": list(array.shape),
             "data": array.ravel().tolist()} for name, array in text_rows(1).items()
        ]}  # fmt: skip
        pixels = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                              "data": [1.0] * 64}]}  # fmt: skip
        served = {
            "text": {httpx.post(f"{url}/v2/models/text/infer", json=body).headers["x-served-by"]
                     for _ in range(10)},
            "digits": {httpx.post(f"{url}/v2/models/digits/infer", json=pixels)
                       .headers["x-served-by"] for _ in range(10)},
        }  # fmt: skip
        assert served == {"text": {"student"}, "digits": {"teacher"}}
        legacy = httpx.put(f"{url}/admin/traffic", json={"student_share": 0.5}, headers=ADMIN)
        assert legacy.status_code == 409 and "'digits', 'text'" in legacy.json()["error"]
        assert two_model_gateway.metric("gateway_traffic_share", model="text",
                                        backend="student") == 1.0  # fmt: skip
        assert two_model_gateway.metric("gateway_traffic_share", model="digits",
                                        backend="student") == 0.0  # fmt: skip
    finally:
        two_model_gateway.set_share(0.0, model="text")


def test_one_models_student_is_changed_and_the_others_is_not(
    two_model_gateway: TestGateway,
) -> None:
    """``PUT /admin/models/digits/student`` loads a registry candidate for digits alone: digits
    answers as the candidate's ONNX file, text keeps its student; the unnamed route is a 409
    naming the models; a digits candidate offered to text is refused, saying why."""
    url, gateway = two_model_gateway.url, two_model_gateway
    registry = reg.load(REGISTRY_PATH)
    selection = reg.select(registry, 0.02, "latency")
    assert selection is not None, "the committed registry has a candidate within 2 points"
    chosen = selection.chosen
    text_student = reg.content_hash(TEXT_STUDENT_PATH)
    try:
        changed = httpx.put(f"{url}/admin/models/digits/student", json={"model_id": chosen["id"]},
                            headers=ADMIN, timeout=30)  # fmt: skip
        assert changed.status_code == 200, changed.text
        assert httpx.get(f"{url}/admin/models/digits/traffic").json()["student_id"] == chosen["id"]
        assert httpx.get(f"{url}/v2/models/digits").json()["student_id"] == chosen["id"]
        assert httpx.get(f"{url}/admin/models/text/traffic").json()["student_id"] == text_student
        assert httpx.get(f"{url}/v2/models/text").json()["student_id"] == text_student
        assert gateway.metric("gateway_student_info", model="digits", student_id=chosen["id"]) == 1
        assert gateway.metric("gateway_student_info", model="text", student_id=text_student) == 1
        pixels = np.random.default_rng(3).uniform(0, 16, (4, 64)).astype(np.float32)
        body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [4, 64],
                            "data": pixels.ravel().tolist()}]}  # fmt: skip
        answer = httpx.post(f"{url}/v2/models/digits/infer", json=body,
                            headers={"x-canary": "student"})  # fmt: skip
        assert answer.headers["x-served-by"] == "student"
        logits = np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(4, -1)
        expected = onnx_answer(REGISTRY_PATH.parent / chosen["file"], {"pixels": pixels})
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)

        unnamed = httpx.put(f"{url}/admin/student", json={"model_id": chosen["id"]},
                            headers=ADMIN)  # fmt: skip
        assert unnamed.status_code == 409 and "'digits', 'text'" in unnamed.json()["error"]
        wrong = httpx.put(f"{url}/admin/models/text/student", json={"model_id": chosen["id"]},
                          headers=ADMIN, timeout=30)  # fmt: skip
        # text's inputs config names inputs the digits candidate lacks: refused, saying so
        assert wrong.status_code == 409, wrong.text
        assert "the model has no input 'attention_mask'" in wrong.json()["error"]
        assert httpx.get(f"{url}/admin/models/text/traffic").json()["student_id"] == text_student
    finally:  # the module's gateway back as it was (a failure here must not hide the test's)
        shipped = reg.content_hash(STUDENT_PATH)
        httpx.put(f"{url}/admin/models/digits/student", json={"model_id": shipped},
                  headers=ADMIN, timeout=30)  # fmt: skip


def test_a_fleet_shares_each_models_share_among_the_replicas_that_serve_it(
    redis_fleet: RedisFleet,
) -> None:
    both_models = redis_fleet.start(both())
    text_only = redis_fleet.start(both(models=[text_entry()]))
    listed = httpx.get(f"{text_only.url}/v2/models").json()["models"]
    assert [m["name"] for m in listed] == ["text"]
    both_models.set_share(0.25, model="text")
    wait_until(lambda: text_only.share("text") == 0.25, timeout=10,
               what="the text-only replica applies the fleet's text share")  # fmt: skip
    digits = httpx.get(f"{both_models.url}/admin/models/digits/traffic").json()
    assert digits["student_share"] == digits["fleet"]["student_share"] == 0.0
    # the controller's view of each model's fleet: the replicas registered under that model
    for model, replicas in (("digits", 1), ("text", 2)):
        store = StoreFleet(redis_fleet.redis_url, model, redis_fleet.prefix)
        try:
            wait_until(lambda: len(store.scrape_targets()) == replicas, timeout=10,  # noqa: B023
                       what=f"{replicas} replica(s) registered under {model}")  # fmt: skip
        finally:
            store.close()
