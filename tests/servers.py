"""Real servers for the tests, started with readiness polling (never a fixed sleep)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.launcher import BIN, GatewayProcess, PrometheusProcess, free_port, wait_until

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
