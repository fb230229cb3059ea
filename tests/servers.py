"""Real servers for the tests: a gateway process on a free loopback port, started and stopped with
readiness polling (never a fixed sleep)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

BIN = Path(sys.executable).parent
ADMIN_TOKEN = "test-admin-token-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class GatewayProcess:
    """``distill-gateway`` in a subprocess, its output in ``log_path``."""

    def __init__(
        self,
        tmp_dir: Path,
        config: dict[str, Any] | None = None,
        admin_token: str | None = ADMIN_TOKEN,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.admin_token = admin_token
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = tmp_dir / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config or {}))
        self.log_path = tmp_dir / f"gateway-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            str(BIN / "distill-gateway"),
            "--config", str(self.config_path),
            "--port", str(self.port),
            "--log-level", "info",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_GATEWAY_")}
        if self.admin_token is not None:
            env["DISTILL_GATEWAY_ADMIN_TOKEN"] = self.admin_token
        return env

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment()
            )
        wait_until(self._ready, timeout, f"gateway on {self.url} to be ready\n{self.log()}")
        return self

    def _ready(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"gateway exited with {self._process.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def set_share(self, share: float) -> dict[str, Any]:
        response = httpx.put(
            f"{self.url}/admin/traffic",
            json={"student_share": share},
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def metrics_text(self) -> str:
        return httpx.get(f"{self.url}/metrics").text

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value from ``/metrics``; 0 when the series does not exist yet."""
        return read_metric(self.metrics_text(), name, **labels)


def read_metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
