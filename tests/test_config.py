"""Bad configuration stops the gateway before it binds its port, naming the key."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from models import STUDENT_PATH, TEACHER_PATH
from tests.servers import BIN, TestGateway, busy_port, free_port

pytestmark = pytest.mark.e2e  # starts distill-gateway processes


def _start(
    config_text: str, tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[int, str, int]:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_text)
    port = free_port()
    result = subprocess.run(
        [str(BIN / "distill-gateway"), "--config", str(config), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    return result.returncode, result.stderr, port


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("config_text", "named"),
    [
        ("traffic: {student_shar: 0.1}\n", "traffic.student_shar: Extra inputs are not permitted"),
        ("traffic: {student_share: 1.5}\n", "traffic.student_share: Input should be less than"),
        ("shadow: {sample_rate: lots}\n", "shadow.sample_rate"),
        (
            "teacher: {kind: tensorflow, path: x.onnx}\n",
            "teacher: unknown kind 'tensorflow': expected one of 'onnx', 'triton'",
        ),
        ("student: {path: /no/such/model.onnx}\n", "student.path: no such file"),
        ("teacher: {path: t.onnx, device: tpu}\n", "teacher.device"),
        ("model: 'bad name/with slash'\n", "model: String should match pattern"),
        ("admin_token: hunter2\n", "admin_token: not allowed in a file"),
        ("traffic: [1, 2\n", "not valid YAML at line 2, column 1: expected ',' or ']'"),
        ("- a list\n", "top level must be a mapping"),
        (
            "state: {url: 'http://redis:6379'}\n",
            "state.url: must be 'memory' or a "
            "redis://host:port/db (rediss:// for TLS) URL, got 'http://redis:6379'",
        ),
        (
            "state: {heartbeat_seconds: 5, replica_ttl_seconds: 6}\n",
            "state.replica_ttl_seconds must be at least twice state.heartbeat_seconds",
        ),
    ],
)
def test_config_errors_fail_fast_and_name_the_key(
    tmp_path: Path, config_text: str, named: str
) -> None:
    code, stderr, port = _start(config_text, tmp_path)
    assert code == 2
    assert named in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr  # one line, naming the file
    assert str(tmp_path) in stderr
    assert _port_is_free(port)


def test_environment_overrides_are_checked_too(tmp_path: Path) -> None:
    code, stderr, _ = _start("", tmp_path, {"DISTILL_GATEWAY_TRAFFIC__STUDENT_SHARE": "2"})
    assert code == 2 and "traffic.student_share" in stderr


def test_a_short_admin_token_is_a_start_up_error(tmp_path: Path) -> None:
    code, stderr, port = _start("", tmp_path, {"DISTILL_GATEWAY_ADMIN_TOKEN": "fifteen-chars!!"})
    assert code == 2
    assert "admin_token: DISTILL_GATEWAY_ADMIN_TOKEN must be at least 16 characters" in stderr
    assert "fifteen-chars!!" not in stderr
    assert _port_is_free(port)


def _onnx_with_output_width(path: Path, width: int) -> Path:
    weights = helper.make_tensor("w", TensorProto.FLOAT, [64, width], [0.01] * (64 * width))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["pixels", "w"], ["logits"])],
        "mismatch",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_signature_mismatch_is_a_start_up_error(tmp_path: Path) -> None:
    odd = _onnx_with_output_width(tmp_path / "five_classes.onnx", 5)
    code, stderr, port = _start(
        f"teacher: {{path: {TEACHER_PATH}}}\nstudent: {{path: {odd}}}\n", tmp_path
    )
    assert code == 2
    assert "signatures differ" in stderr and "output 'logits'" in stderr
    assert "[-1, 10]" in stderr and "[-1, 5]" in stderr
    assert _port_is_free(port)


def test_device_cuda_without_a_usable_gpu_is_a_start_up_error(tmp_path: Path) -> None:
    code, stderr, _ = _start(
        f"teacher: {{path: {TEACHER_PATH}, device: cuda}}\nstudent: {{path: {STUDENT_PATH}}}\n",
        tmp_path,
    )
    if code == 0:  # pragma: no cover - only on a machine with a working GPU
        pytest.skip("CUDA is usable here")
    assert code == 2
    assert "device is 'cuda' but ONNX Runtime could not use CUDA" in stderr
    assert "[E:onnxruntime" not in stderr  # one clear line, not ORT's own error dump


def test_a_port_in_use_is_found_before_the_models_load() -> None:
    with busy_port() as port:
        result = subprocess.run(
            [str(BIN / "distill-gateway"), "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 3
    # one line, and nothing loaded first (the loads log a line each)
    assert result.stderr.strip() == (
        f"distill-gateway: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def test_the_gateway_and_uvicorn_log_in_one_format(
    fresh_gateway: Callable[..., TestGateway],
) -> None:
    gateway = fresh_gateway()
    httpx.get(f"{gateway.url}/v2/health/ready").raise_for_status()
    gateway.stop()
    lines = gateway.log_path.read_text().splitlines()
    assert any(" uvicorn." in line for line in lines) and any(" gateway" in line for line in lines)
    assert [line for line in lines if not LOG_LINE.match(line)] == []
    assert any(f"listening on {gateway.url} (admin, metrics, v2)" in line for line in lines)
