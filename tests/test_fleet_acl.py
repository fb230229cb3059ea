"""The fleet's store as the manifests run it (deploy/kubernetes/redis.yaml): TLS only, Redis's
default user off, the gateways and the controller each an ACL user of their own with the rights
the manifest gives them. Real Redis, real gateways, the controller's store client.

Whoever can write the fleet's keys sets the share and the student without the admin token, so
the store must let no one else in, and its users nothing beyond the fleet's keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import trustme
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from controller.fleet_store import StoreFleet
from controller.local.processes import RedisProcess
from tests.manifests import named
from tests.servers import TestGateway, wait_until

pytestmark = pytest.mark.e2e

PASSWORDS = {"distill-gateway": "gateway-password-0123456789",
             "distill-canary": "controller-password-0123456789"}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A Redis with the manifest's users and their rights, over TLS."""
    tmp = tmp_path_factory.mktemp("acl")
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    files = tmp / "server.pem", tmp / "server.key", tmp / "ca.pem"
    certificate.cert_chain_pems[0].write_to_path(str(files[0]))
    certificate.private_key_pem.write_to_path(str(files[1]))
    authority.cert_pem.write_to_path(str(files[2]))
    rights = " ".join(named("ConfigMap", "distill-redis-acl")["data"]["rights"].split())
    users = {name: (password, rights) for name, password in PASSWORDS.items()}
    server = RedisProcess(tmp / "redis", tls=files, users=users).start()
    yield server
    server.stop()


def as_gateway(tmp_path: Path, store: RedisProcess) -> TestGateway:
    config = {
        "state": {"url": store.url, "heartbeat_seconds": 0.5, "replica_ttl_seconds": 2.0},
        "shadow": {"sample_rate": 0.0},
    }  # the default key prefix, as the manifest's rights
    login = {"DISTILL_GATEWAY_STATE__USERNAME": "distill-gateway",
             "DISTILL_GATEWAY_STATE__PASSWORD": PASSWORDS["distill-gateway"]}  # fmt: skip
    return TestGateway(tmp_path, config, environment=login).start()


def test_the_fleet_works_through_its_acl_users_and_nobody_else_gets_in(
    store: RedisProcess, tmp_path: Path
) -> None:
    first, second = as_gateway(tmp_path, store), as_gateway(tmp_path, store)
    try:
        # the share, published and applied everywhere
        assert first.set_share(0.3)["fleet"]["student_share"] == 0.3
        traffic = f"{second.url}/admin/traffic"
        wait_until(lambda: httpx.get(traffic).json()["student_share"] == 0.3, 5, "the share")
        # predictions and labels through the exchange script, joined on the other replica
        body = {"id": "acl-1", "inputs": [{"name": "pixels", "shape": [1, 64],
                                          "datatype": "FP32", "data": [0.0] * 64}]}  # fmt: skip
        answered = httpx.post(f"{first.url}/v2/models/digits/infer", json=body)
        assert answered.status_code == 200
        # its ticket verifies on the other replica: they share the admin token, hence the key
        ticket = {"x-feedback-ticket": answered.headers["x-feedback-ticket"]}
        label = httpx.post(f"{second.url}/v2/models/digits/feedback",
                           json={"id": "acl-1", "label": 3}, headers=ticket)  # fmt: skip
        assert label.status_code == 200, label.text
        assert first.metric("gateway_state_store_up", model="digits") == 1
        # the controller, as its own user: registry, share, student
        fleet = StoreFleet(store.url, "digits", password=PASSWORDS["distill-canary"],
                           username="distill-canary")  # fmt: skip
        try:
            assert {t.student_share for t in fleet.read().values()} == {0.3}
            fleet.set_share(0.0)
            served = httpx.get(traffic).json()["student_id"]
            fleet.set_student(served)
            assert len(fleet.scrape_targets()) == 2
        finally:
            fleet.close()
        for replica in (first, second):
            assert "NOPERM" not in replica.log() and "NoPermission" not in replica.log()
    finally:
        first.stop()
        second.stop()
    # nobody else: no user, a wrong password, or a fleet user outside the fleet's keys
    anonymous = redis.Redis.from_url(store.url)
    with pytest.raises((AuthenticationError, ResponseError), match=r"(?i)auth"):
        anonymous.hset("distill-gateway:digits:share", "share", "1.0")
    anonymous.close()
    with pytest.raises(AuthenticationError):
        redis.Redis.from_url(store.url, username="distill-gateway", password="guess").ping()
    gateway = redis.Redis.from_url(store.url, username="distill-gateway",
                                   password=PASSWORDS["distill-gateway"])  # fmt: skip
    try:
        for command in (("SET", "another-app:key", "x"), ("FLUSHALL",), ("CONFIG", "GET", "*"),
                        ("KEYS", "*"), ("ACL", "LIST")):  # fmt: skip
            with pytest.raises(NoPermissionError):
                gateway.execute_command(*command)
    finally:
        gateway.close()


def test_a_store_login_in_the_config_alone_is_enough(store: RedisProcess, tmp_path: Path) -> None:
    """state.username in the file (the password from the environment), as in a config map."""
    config = {"state": {"url": store.url, "username": "distill-gateway"},
              "shadow": {"sample_rate": 0.0}}  # fmt: skip
    login = {"DISTILL_GATEWAY_STATE__PASSWORD": PASSWORDS["distill-gateway"]}
    replica = TestGateway(tmp_path, config, environment=login).start()
    try:
        assert replica.metric("gateway_state_store_up", model="digits") == 1
        assert replica.set_share(0.2)["fleet"]["student_share"] == 0.2
        pixels = {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
        infer = httpx.post(f"{replica.url}/v2/models/digits/infer", json={"inputs": [pixels]})
        assert infer.status_code == 200
    finally:
        replica.stop()
