"""Real servers for the tests, started with readiness polling (never a fixed sleep)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import httpx

from controller.local.processes import (
    BIN,
    LOCAL_FEEDBACK_TOKEN,
    GatewayProcess,
    ManagedProcess,
    PrometheusProcess,
    free_port,
    wait_until,
)

__all__ = [
    "ADMIN_TOKEN", "BIN", "PrometheusProcess", "TestGateway", "TritonProcess", "busy_port",
    "free_port", "read_metric", "wait_until",
]  # fmt: skip

ADMIN_TOKEN = "test-admin-token-0123456789"
LABELLER = {"Authorization": f"Bearer {LOCAL_FEEDBACK_TOKEN}"}
"""What a trusted label pipeline sends: the feedback token every test gateway has."""


class TestGateway(GatewayProcess):
    __test__ = False  # not a test class, despite the name

    def __init__(
        self,
        tmp_dir: Path,
        config: dict[str, Any] | None = None,
        admin_token: str | None = ADMIN_TOKEN,
        environment: dict[str, str] | None = None,
    ) -> None:
        super().__init__(tmp_dir, config, admin_token, environment=environment)

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value from ``/metrics``; 0 when the series does not exist yet."""
        return read_metric(self.metrics_text(), name, **labels)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` with these labels (and any others)."""
        return read_total(self.metrics_text(), name, **labels)


@contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield int(busy.getsockname()[1])


def read_metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def read_total(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


TRITON_PYTHON = Path(__file__).resolve().parents[1] / ".venv-triton" / "bin" / "python"
TRITON_MODELS = ("teacher", "student", "student_slow", "student_five")


class TritonProcess(ManagedProcess):
    """A real Triton Inference Server (nvidia-pytriton's tritonserver) on loopback ports."""

    name = "Triton"
    new_session = True  # tritonserver runs as a child of the pytriton script

    def __init__(
        self, tmp_dir: Path, slow_ms: float = 300.0, extra: dict[str, Path] | None = None
    ) -> None:
        """``extra``: more ONNX files to serve, by model name, each with its own signature."""
        from models import MODELS_DIR

        self.models = (*TRITON_MODELS, *(extra or {}))

        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.http_url = f"127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.log_path = tmp_dir / f"triton-{self.http_port}.log"
        self._command = [
            str(TRITON_PYTHON), str(Path(__file__).parent / "triton" / "serve.py"),
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), "--models-dir", str(MODELS_DIR),
            "--slow-ms", str(slow_ms),
            *(f"--extra={name}={path}" for name, path in (extra or {}).items()),
        ]  # fmt: skip

    def start(self, timeout: float = 90.0) -> Self:
        return super().start(timeout)

    def command(self) -> list[str]:
        return self._command

    def is_ready(self) -> bool:
        """Ready when every model is: Triton's server readiness comes before its models'."""
        return all(
            httpx.get(f"http://{self.http_url}/v2/models/{m}/ready", timeout=1).status_code == 200
            for m in self.models
        )
