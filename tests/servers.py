"""Real servers for the tests, started with readiness polling (never a fixed sleep)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
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
    "ADMIN_TOKEN", "BIN", "PrometheusProcess", "RedisFleet", "TestGateway", "TritonProcess",
    "busy_port", "free_port", "read_metric", "run_benchmark", "wait_until",
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
        grpc: bool = False,
    ) -> None:
        super().__init__(tmp_dir, config, admin_token, environment=environment, grpc=grpc)

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value from ``/metrics``; 0 when the series does not exist yet."""
        return read_metric(self.metrics_text(), name, **labels)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` with these labels (and any others)."""
        return read_total(self.metrics_text(), name, **labels)


class RedisFleet:
    """Gateway replicas sharing one Redis under ``prefix``, each heartbeating every half second
    (a replica gone leaves the fleet within 2 s); ``stop`` stops every one started."""

    def __init__(self, redis_url: str, tmp_dir: Path, prefix: str) -> None:
        self.redis_url, self.prefix, self._tmp_dir = redis_url, prefix, tmp_dir
        self._started: list[TestGateway] = []

    def start(self, config: dict[str, Any]) -> TestGateway:
        """A replica of ``config`` (whose own ``state``, if any, replaces the fleet's)."""
        state = {"url": self.redis_url, "key_prefix": self.prefix, "heartbeat_seconds": 0.5,
                 "replica_ttl_seconds": 2.0}  # fmt: skip
        replica = TestGateway(self._tmp_dir, {"state": state, **config}).start()
        self._started.append(replica)
        return replica

    def stop(self) -> None:
        for replica in self._started:
            replica.stop()


def run_benchmark(
    module: str, tmp_path: Path, *args: str, ok: tuple[int, ...] = (0,)
) -> tuple[int, dict[str, Any]]:
    """``python -m tests.benchmarks.<module> *args --out <tmp_path>/<module>.json``: its exit
    status (one of ``ok``, else the test fails with its output) and the JSON it wrote."""
    out = tmp_path / f"{module}.json"
    done = subprocess.run(
        [sys.executable, "-m", f"tests.benchmarks.{module}", *args, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode in ok, done.stdout + done.stderr
    return done.returncode, json.loads(out.read_text())


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
TRITON_MODELS = ("teacher", "student", "student_slow", "student_five", "student_hung")


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
