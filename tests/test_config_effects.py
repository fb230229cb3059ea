"""Good configuration takes effect: environment overrides, and model paths relative to the
config file, on real gateway processes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.config import ConfigError, load_settings
from models import STUDENT_PATH, TEACHER_PATH
from tests.servers import TestGateway

StartGateway = Callable[..., TestGateway]


def test_the_environment_overrides_the_config_file(start_gateway: StartGateway) -> None:
    gateway = start_gateway(
        {"model": "digits", "traffic": {"student_share": 0.0}, "shadow": {"sample_rate": 0.0}},
        environment={"DISTILL_GATEWAY_TRAFFIC__STUDENT_SHARE": "0.3",
                     "DISTILL_GATEWAY_MODEL": "mnist"},
    )  # fmt: skip
    assert httpx.get(f"{gateway.url}/admin/traffic").json()["student_share"] == 0.3
    assert httpx.get(f"{gateway.url}/v2/models/mnist").status_code == 200
    assert httpx.get(f"{gateway.url}/v2/models/digits").status_code == 404


def test_model_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    here = tmp_path / "deployment"
    (here / "onnx" / "v2").mkdir(parents=True)
    shutil.copy(TEACHER_PATH, here / "onnx" / "teacher.onnx")
    shutil.copy(STUDENT_PATH, here / "onnx" / "v2" / "student.onnx")
    gateway = TestGateway(here, {
        "teacher": {"path": "onnx/teacher.onnx"},
        "student": {"path": "onnx/v2/student.onnx"},
    })  # fmt: skip
    gateway.start()  # its config file lands in `here`, so the paths resolve from there
    try:
        body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                            "data": [1.0] * 64}]}  # fmt: skip
        for backend in ("teacher", "student"):
            answer = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=body,
                                headers={"x-canary": backend})  # fmt: skip
            assert answer.status_code == 200 and answer.headers["x-served-by"] == backend
    finally:
        gateway.stop()


def test_a_student_timeout_that_leaves_no_time_to_fall_back_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"student: {{path: {STUDENT_PATH}, timeout_ms: 2000}}\n"
                      "resilience: {request_timeout_ms: 2000}\n")  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert str(refused.value) == (
        f"{config}: invalid config: (top level): student.timeout_ms (2000) must be below "
        "resilience.request_timeout_ms (2000): a student that times out must leave the request "
        "time to be answered by the teacher"
    )
    config.write_text(f"student: {{path: {STUDENT_PATH}, timeout_ms: 1999}}\n")
    assert load_settings(config).student.timeout_ms == 1999
