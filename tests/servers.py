"""Real servers for the tests, started with readiness polling (never a fixed sleep)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.launcher import BIN, GatewayProcess, free_port, wait_until

__all__ = [
    "ADMIN_TOKEN", "BIN", "PrometheusProcess", "TestGateway", "free_port", "read_metric",
    "wait_until",
]  # fmt: skip

ADMIN_TOKEN = "test-admin-token-0123456789"


class TestGateway(GatewayProcess):
    __test__ = False  # not a test class, despite the name

    def __init__(
        self,
        tmp_dir: Path,
        config: dict[str, Any] | None = None,
        admin_token: str | None = ADMIN_TOKEN,
    ) -> None:
        super().__init__(tmp_dir, config, admin_token)

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


class PrometheusProcess:
    """A real Prometheus server (Debian's package) scraping the given targets on loopback."""

    def __init__(
        self,
        tmp_dir: Path,
        jobs: dict[str, list[str]],
        scrape_interval: str = "1s",
        rule_files: list[Path] | None = None,
    ) -> None:
        self.port = free_port()
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

    def start(self, timeout: float = 60.0) -> PrometheusProcess:
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
