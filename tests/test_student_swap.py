"""``PUT /admin/student``: a real gateway loads a student from the model registry by its id, only
at share 0, and says which student it serves (``/admin/traffic``, the model metadata, a metric)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import REGISTRY_PATH, STUDENT_PATH, TEACHER_PATH
from models import registry as reg
from models.data import Split
from models.evaluate import onnx_logits
from tests.rollouts import canary_command, run_canary, write_policy
from tests.servers import ADMIN_TOKEN, TestGateway

StartGateway = Callable[..., TestGateway]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _put(
    gateway: TestGateway, model_id: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.put(f"{gateway.url}/admin/student", json={"model_id": model_id},
                     headers=AUTH if headers is None else headers, timeout=30)  # fmt: skip


def _chosen() -> dict[str, Any]:
    """The candidate `distill-models select` picks from the committed registry."""
    selection = reg.select(reg.load(REGISTRY_PATH), 0.02, "latency")
    assert selection is not None, "the committed registry has a candidate within 2 points"
    return selection.chosen


def _infer_on_student(gateway: TestGateway, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    response = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=body,
                          headers={"x-canary": "student"})  # fmt: skip
    assert response.headers["x-served-by"] == "student"
    output = response.json()["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def test_a_registered_candidate_becomes_the_student_and_every_view_names_it(
    start_gateway: StartGateway, test_split: Split
) -> None:
    gateway = start_gateway({"shadow": {"sample_rate": 0.0}})
    before = httpx.get(f"{gateway.url}/admin/traffic").json()
    assert before["student_id"] == reg.content_hash(STUDENT_PATH)  # the shipped student's id
    chosen = _chosen()

    response = _put(gateway, chosen["id"])

    assert response.status_code == 200, response.text
    assert response.json()["student_id"] == chosen["id"]
    assert httpx.get(f"{gateway.url}/admin/traffic").json()["student_id"] == chosen["id"]
    assert httpx.get(f"{gateway.url}/v2/models/digits").json()["student_id"] == chosen["id"]
    assert gateway.metric("gateway_student_info", student_id=chosen["id"]) == 1
    assert gateway.metric("gateway_student_info", student_id=before["student_id"]) == 0
    # the answers are the candidate's own: ONNX Runtime on its file gives the same logits
    x = test_split.x[:8]
    expected = onnx_logits(REGISTRY_PATH.parent / chosen["file"], x)
    np.testing.assert_allclose(_infer_on_student(gateway, x), expected, rtol=1e-5, atol=1e-5)
    assert "student f6dd4edc5b382a10 -> " + chosen["id"] in gateway.log()
    # asking again for the student it serves changes nothing, even at a share above 0
    gateway.set_share(0.05)
    again = _put(gateway, chosen["id"])
    assert again.status_code == 200 and again.json()["student_id"] == chosen["id"]


def test_a_student_is_changed_only_at_share_0(start_gateway: StartGateway) -> None:
    gateway = start_gateway({"shadow": {"sample_rate": 0.0}, "traffic": {"student_share": 0.25}})
    served = httpx.get(f"{gateway.url}/admin/traffic").json()["student_id"]

    response = _put(gateway, _chosen()["id"])

    assert response.status_code == 409
    assert "share is 0.25" in response.json()["error"]
    assert httpx.get(f"{gateway.url}/admin/traffic").json()["student_id"] == served


def test_bad_requests_say_what_was_wrong_and_change_nothing(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    registry_path = _registry_with_trouble(tmp_path)
    gateway = start_gateway({"shadow": {"sample_rate": 0.0}, "registry": str(registry_path)})
    served = httpx.get(f"{gateway.url}/admin/traffic").json()["student_id"]
    ids = json.loads((tmp_path / "ids.json").read_text())

    cases = [
        (_put(gateway, "0123456789abcdef", headers={}), 401, "missing bearer token"),
        (_put(gateway, "0123456789abcdef"), 404, "no model with id '0123456789abcdef'"),
        (_put(gateway, "not hex!"), 422, "model_id"),
        (_put(gateway, ids["changed"]), 409, "has changed since it was registered"),
        (_put(gateway, ids["rejected"]), 409, "registered as 'rejected: conversion'"),
        (_put(gateway, ids["other_signature"]), 422, "signature differs from the teacher's"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["error"]
    assert httpx.get(f"{gateway.url}/admin/traffic").json()["student_id"] == served
    probe = np.zeros((1, 64), dtype=np.float32)
    assert _infer_on_student(gateway, probe).shape == (1, 10)  # still the old student, serving


def _registry_with_trouble(tmp_path: Path) -> Path:
    """A registry of three entries that must each be refused: a file edited after it was
    registered, a quantized file rejected in conversion, and a model of another signature."""
    registry = reg.load(REGISTRY_PATH)
    changed = tmp_path / "changed.onnx"
    shutil.copy(STUDENT_PATH.with_name("student_bad.onnx"), changed)
    with changed.open("ab") as file:
        file.write(b"\0")  # a file of its own, registered as it is now ...
    changed_id = reg.content_hash(changed)
    with changed.open("ab") as file:
        file.write(b"\0")  # ... and then changed
    rejected = tmp_path / "rejected.onnx"
    shutil.copy(STUDENT_PATH, rejected)
    other = tmp_path / "other.onnx"
    _five_class_model(other)
    shutil.copy(TEACHER_PATH, tmp_path / "teacher.onnx")
    entries = {
        changed_id: {"id": changed_id, "file": "changed.onnx", "status": "accepted"},
        "ffff000000000000": {"id": "ffff000000000000", "file": "rejected.onnx",
                             "status": reg.REJECTED_CONVERSION},
        reg.content_hash(other): {"id": reg.content_hash(other), "file": "other.onnx",
                                  "status": "accepted"},
    }  # fmt: skip
    registry["candidates"] = entries
    path = tmp_path / "registry.json"
    reg.save(path, registry)
    ids = {"changed": changed_id, "rejected": "ffff000000000000",
           "other_signature": reg.content_hash(other)}  # fmt: skip
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    return path


def _five_class_model(path: Path) -> None:
    """pixels [-1, 64] -> logits [-1, 5]: the right names, the wrong number of classes."""
    weights = numpy_helper.from_array(np.ones((64, 5), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["pixels", "w"], ["logits"])],
        "five",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_a_rollout_whose_student_a_gateway_refuses_never_starts(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = start_gateway({"shadow": {"sample_rate": 0.0}, "traffic": {"student_share": 0.25}})
    state = tmp_path / "rollout.db"
    command = canary_command([gateway], write_policy(tmp_path), state, "--student",
                             _chosen()["id"])  # fmt: skip

    result = run_canary(command, timeout=60)

    assert result.returncode == 5, result.stdout + result.stderr
    assert "was not loaded everywhere" in result.stderr and "share is 0.25" in result.stderr
    assert httpx.get(f"{gateway.url}/admin/traffic").json()["student_share"] == 0.25  # untouched
    unknown = run_canary(canary_command([gateway], write_policy(tmp_path), tmp_path / "b.db",
                                        "--student", "0123456789abcdef"), timeout=60)  # fmt: skip
    assert unknown.returncode == 2 and "no model with id '0123456789abcdef'" in unknown.stderr


def test_a_relative_registry_is_found_beside_the_config_file(tmp_path: Path) -> None:
    """As a model's path is: the gateway runs from anywhere (a pod's working directory is /),
    and `registry: registry.json` means the one next to its config file."""
    chosen = _chosen()
    (tmp_path / Path(chosen["file"]).parent).mkdir(parents=True)
    shutil.copy(REGISTRY_PATH, tmp_path / "registry.json")
    shutil.copy(REGISTRY_PATH.parent / chosen["file"], tmp_path / chosen["file"])
    # its config file is written in tmp_path; the test's working directory has no registry.json
    gateway = TestGateway(tmp_path, {"shadow": {"sample_rate": 0.0}, "registry": "registry.json"})
    assert not Path("registry.json").exists()
    gateway.start()
    try:
        response = _put(gateway, chosen["id"])
        assert response.status_code == 200, response.text
        assert response.json()["student_id"] == chosen["id"]
    finally:
        gateway.stop()
