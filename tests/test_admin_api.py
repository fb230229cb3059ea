"""The admin API: reading and setting the split, and its authentication."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.servers import ADMIN_TOKEN, TestGateway, read_metric

BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


@pytest.fixture
def admin_gateway(gateway: TestGateway) -> Iterator[TestGateway]:
    yield gateway
    gateway.set_share(0.0)


def _put(gateway: TestGateway, body: Any, token: str | None = ADMIN_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.put(f"{gateway.url}/admin/traffic", json=body, headers=headers)


def test_set_share_takes_effect_on_the_next_request(admin_gateway: TestGateway) -> None:
    before = httpx.get(f"{admin_gateway.url}/admin/traffic").json()
    response = _put(admin_gateway, {"student_share": 1.0})
    assert response.status_code == 200
    assert response.json() == {
        "student_share": 1.0,
        "generation": before["generation"] + 1,
        "student_id": before["student_id"],
    }
    served = httpx.post(f"{admin_gateway.url}/v2/models/digits/infer", json=BODY)
    assert served.headers["x-served-by"] == "student"
    assert httpx.get(f"{admin_gateway.url}/admin/traffic").json()["student_share"] == 1.0


def test_missing_token_is_401(admin_gateway: TestGateway) -> None:
    response = _put(admin_gateway, {"student_share": 0.5}, token=None)
    assert response.status_code == 401
    assert "missing bearer token" in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_wrong_token_is_401_and_changes_nothing(admin_gateway: TestGateway) -> None:
    before = httpx.get(f"{admin_gateway.url}/admin/traffic").json()
    response = _put(admin_gateway, {"student_share": 0.5}, token="not-the-token")
    assert response.status_code == 401
    assert "invalid bearer token" in response.json()["error"]
    assert httpx.get(f"{admin_gateway.url}/admin/traffic").json() == before


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_share_outside_0_1_is_422(admin_gateway: TestGateway, share: float) -> None:
    response = _put(admin_gateway, {"student_share": share})
    assert response.status_code == 422
    assert "student_share" in response.json()["error"]


def test_body_without_share_is_422_and_bad_json_400(admin_gateway: TestGateway) -> None:
    assert _put(admin_gateway, {"share": 0.5}).status_code == 422
    response = httpx.put(
        f"{admin_gateway.url}/admin/traffic",
        content=b"{",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 400


def test_no_token_configured_is_403(start_gateway: Any) -> None:
    locked = start_gateway({"shadow": {"sample_rate": 0}}, admin_token=None)
    response = _put(locked, {"student_share": 0.5}, token="anything")
    assert response.status_code == 403
    assert "DISTILL_GATEWAY_ADMIN_TOKEN" in response.json()["error"]


def test_the_token_is_never_logged(admin_gateway: TestGateway) -> None:
    _put(admin_gateway, {"student_share": 0.3})
    _put(admin_gateway, {"student_share": 0.3}, token="wrong-token-xyz")
    log = admin_gateway.log()
    assert "student share" in log  # the change itself is logged
    assert "PUT /admin/traffic from 127.0.0.1 refused: invalid bearer token" in log
    assert ADMIN_TOKEN not in log and "wrong-token-xyz" not in log


def test_refused_logins_are_counted_by_reason(admin_gateway: TestGateway) -> None:
    def refused(reason: str) -> float:
        metrics = httpx.get(f"{admin_gateway.url}/metrics").text
        return read_metric(metrics, "gateway_admin_auth_failures_total", reason=reason)

    before = {reason: refused(reason) for reason in ("missing", "invalid")}
    for _ in range(3):
        _put(admin_gateway, {"student_share": 0.3}, token="guess-guess-guess")
    _put(admin_gateway, {"student_share": 0.3}, token=None)
    assert _put(admin_gateway, {"student_share": 0.0}).status_code == 200  # not counted
    assert refused("invalid") == before["invalid"] + 3
    assert refused("missing") == before["missing"] + 1


def test_admin_and_metrics_can_leave_the_public_port(start_gateway: Any, tmp_path: Any) -> None:
    """admin.port and metrics.port: the public port then answers neither, so a Service that
    exposes only it exposes no admin API and no metrics (a NetworkPolicy guards the others)."""
    from tests.servers import free_port

    admin_port, metrics_port = free_port(), free_port()
    gateway = start_gateway({"shadow": {"sample_rate": 0.0}, "admin": {"port": admin_port},
                             "metrics": {"port": metrics_port}})  # fmt: skip
    admin, metrics = f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{metrics_port}"
    assert httpx.get(f"{gateway.url}/admin/traffic").status_code == 404
    assert _put(gateway, {"student_share": 1.0}).status_code == 404
    assert httpx.get(f"{gateway.url}/metrics").status_code == 404
    assert httpx.post(f"{gateway.url}/v2/models/digits/infer", json=BODY).status_code == 200

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    moved = httpx.put(f"{admin}/admin/traffic", json={"student_share": 1.0}, headers=headers)
    assert moved.status_code == 200 and moved.json()["student_share"] == 1.0
    served = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=BODY)
    assert served.headers["x-served-by"] == "student"  # one service behind every listener
    assert httpx.get(f"{admin}/v2/health/ready").status_code == 404
    assert httpx.get(f"{admin}/metrics").status_code == 404
    scraped = httpx.get(f"{metrics}/metrics")
    assert scraped.status_code == 200 and "gateway_traffic_share" in scraped.text
    assert httpx.get(f"{metrics}/admin/traffic").status_code == 404

    gateway.stop()  # SIGTERM stops every listener, not only the public one
    assert gateway.returncode == 0  # a graceful stop
    assert gateway.log().count("Finished server process") == 3  # each one shut down in order
    for url in (gateway.url, admin, metrics):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/", timeout=2)


def test_a_token_stored_with_a_trailing_newline_still_admits_its_owner(start_gateway: Any) -> None:
    """As ``kubectl create secret --from-file`` stores it: the client sends it without."""
    filed = start_gateway({"shadow": {"sample_rate": 0}}, admin_token=ADMIN_TOKEN + "\n")
    assert _put(filed, {"student_share": 0.0}).status_code == 200
    assert _put(filed, {"student_share": 0.0}, token=ADMIN_TOKEN + "x").status_code == 401
