"""Starts local processes on free loopback ports and waits until they are ready: a gateway, and a
Prometheus server scraping it.

For the demo, the local stack, the benchmarks and the tests; production runs them its own way.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Polls ``condition`` until it holds; raises TimeoutError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class _Subprocess:
    """A child process whose output goes to ``log_path``; stopped gently, then firmly."""

    log_path: Path
    _process: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()


class GatewayProcess(_Subprocess):
    """``distill-gateway`` in a subprocess, its output in ``log_path``."""

    def __init__(
        self,
        work_dir: Path,
        config: dict[str, Any] | None = None,
        admin_token: str | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.admin_token = admin_token
        work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = work_dir / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config or {}))
        self.log_path = work_dir / f"gateway-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Self:
        command = [
            str(BIN / "distill-gateway"),
            "--config", str(self.config_path),
            "--port", str(self.port),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_GATEWAY_")}
        if self.admin_token is not None:
            env["DISTILL_GATEWAY_ADMIN_TOKEN"] = self.admin_token
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
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


class PrometheusProcess(_Subprocess):
    """A real Prometheus server (Debian's package) scraping the given targets on loopback."""

    def __init__(
        self,
        tmp_dir: Path,
        jobs: dict[str, list[str]],
        scrape_interval: str = "1s",
        rule_files: list[Path] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tmp_dir / f"prometheus-{self.port}"
        self.dir.mkdir(parents=True)
        self.targets = sum(len(targets) for targets in jobs.values())
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(path) for path in rule_files or []],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in jobs.items()
            ],
        }
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Self:
        command = [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._targets_up, timeout, "Prometheus to scrape its targets")
        return self

    def _targets_up(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self._process.returncode}:\n{self.log()}")
        try:
            result = self.query("sum(up)")
        except httpx.HTTPError:
            return False
        return bool(result) and float(result[0]["value"][1]) == self.targets

    def query(self, promql: str, **params: str | float) -> list[dict[str, Any]]:
        """An instant query (or a range query when ``start``, ``end`` and ``step`` are given)."""
        endpoint = "query_range" if "start" in params else "query"
        response = httpx.get(
            f"{self.url}/api/v1/{endpoint}", params={"query": promql, **params}, timeout=10
        )
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
