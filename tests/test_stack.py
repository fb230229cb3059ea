"""`distill-stack`: the local full stack runs a rollout through its own Prometheus."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.rollouts import write_policy
from tests.servers import BIN, free_port

pytestmark = pytest.mark.e2e  # runs distill-stack: gateway, Prometheus, controller


def test_the_local_stack_promotes_the_student_through_prometheus_with_grpc_traffic(
    tmp_path: Path,
) -> None:
    ports = [str(free_port()) for _ in range(3)]
    result = subprocess.run(
        [str(BIN / "distill-stack"), "--exit-after-rollout", "--gateway-port", ports[0],
         "--prometheus-port", ports[1], "--controller-port", ports[2],
         "--policy", str(write_policy(tmp_path, interval_seconds=1)), "--protocol", "grpc"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"prometheus  http://127.0.0.1:{ports[1]}" in result.stdout
    assert "rollout Promoted" in result.stdout
    # It really read Prometheus: 11 counter queries per analysis, and a promotion needs at least
    # one analysis at each of the three steps.
    answered = re.search(r"prometheus answered (\d+) PromQL queries", result.stdout)
    assert answered is not None and int(answered.group(1)) >= 3 * 11, result.stdout[-2000:]
    assert "distill-gateway.json" in result.stdout
    # The traffic went over gRPC, and the controller judged it like any other.
    served = re.search(r"answered 0 requests over http, (\d+) requests over grpc", result.stdout)
    assert served is not None and int(served.group(1)) > 300, result.stdout[-2000:]
    # Two replicas shared one Redis: the labels, each posted to the other replica, all joined.
    assert "the 2 gateways answered" in result.stdout
    joined = re.search(r"(\d+) labels joined, each posted to another replica", result.stdout)
    assert joined is not None and int(joined.group(1)) > 300, result.stdout[-2000:]
