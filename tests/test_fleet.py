"""Fleet mode against a real Redis (Debian's redis-server) and real gateway processes: one share
for every replica, labels joined wherever they land, the store failing without the gateways
failing, and ``--workers``."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import trustme

from controller.actuator import GatewaysDisagree
from controller.fleet_store import StoreFleet
from controller.local.processes import RedisProcess
from models import REGISTRY_PATH, registry
from models.data import Split
from tests.servers import (
    ADMIN_TOKEN,
    BIN,
    LABELLER,
    RedisFleet,
    TestGateway,
    free_port,
    read_total,
    wait_until,
)

pytestmark = pytest.mark.e2e

StartReplica = Callable[..., TestGateway]
FLEET_APPLIES_WITHIN = 1.0  # seconds: the issue's bound for every replica to apply a PUT
CLIENT = httpx.Client(timeout=10)  # one connection pool: a new client per call costs ~40 ms


@pytest.fixture(scope="module", autouse=True)
def _close_the_client() -> Iterator[None]:
    yield
    CLIENT.close()


@pytest.fixture(scope="module")
def redis(redis_server: RedisProcess) -> RedisProcess:
    return redis_server


@pytest.fixture
def fleet(redis_fleet: RedisFleet) -> StartReplica:
    """Starts replicas sharing ``redis`` under a key prefix of this test's own."""

    def start(share: float = 0.0, **config: Any) -> TestGateway:
        return redis_fleet.start({"traffic": {"student_share": share},
                                  "shadow": {"sample_rate": 0.0}, **config})  # fmt: skip

    return start


def traffic(replica: TestGateway) -> dict[str, Any]:
    result: dict[str, Any] = CLIENT.get(f"{replica.url}/admin/traffic").json()
    return result


def infer(url: str, request_id: str, rows: np.ndarray) -> httpx.Response:
    body = {
        "id": request_id,
        "inputs": [{"name": "pixels", "shape": list(rows.shape), "datatype": "FP32",
                    "data": rows.ravel().tolist()}],
    }  # fmt: skip
    return CLIENT.post(f"{url}/v2/models/digits/infer", json=body)


def label(url: str, request_id: str, classes: int | list[int]) -> httpx.Response:
    return CLIENT.post(f"{url}/v2/models/digits/feedback", json={"id": request_id,
                       "label": classes}, headers=LABELLER)  # fmt: skip


def test_a_share_put_on_one_replica_is_applied_by_all_within_a_second(fleet: StartReplica) -> None:
    replicas = [fleet() for _ in range(3)]
    written = replicas[1].set_share(0.25)
    assert written["fleet"] == {"student_share": 0.25, "generation": written["generation"]}
    put_at = time.monotonic()
    wait_until(lambda: all(traffic(r)["student_share"] == 0.25 for r in replicas),
               FLEET_APPLIES_WITHIN, "every replica to apply the share")  # fmt: skip
    took = time.monotonic() - put_at
    states = [traffic(r) for r in replicas]
    assert {s["generation"] for s in states} == {written["generation"]}
    assert len({s["replica_id"] for s in states}) == 3
    assert all(s["replicas"] == 3 for s in states) or took < 1.0
    print(f"applied by 3 replicas {took * 1000:.0f} ms after the PUT answered")


def test_restarted_and_new_replicas_take_the_fleets_share_not_their_configs(
    fleet: StartReplica,
) -> None:
    first, second = fleet(share=0.0), fleet(share=0.0)
    first.set_share(0.5)
    wait_until(lambda: traffic(second)["student_share"] == 0.5, 5, "the share to spread")
    second.stop()
    second.start()  # its config still says 0
    newcomer = fleet(share=0.9)  # its config says 0.9: it only seeds an empty store
    for replica in (second, newcomer):
        state = traffic(replica)
        assert state["student_share"] == 0.5, state
        assert state["fleet"]["student_share"] == 0.5
    # and what it serves follows: about half of 400 requests go to the student
    served = [infer(newcomer.url, f"n{i}", np.zeros((1, 64), np.float32)).headers.get(
        "x-served-by") for i in range(400)]  # fmt: skip
    assert 140 < served.count("student") < 260, served.count("student")


def _lose_the_stores_data(redis: RedisProcess, prefix: str) -> None:
    """Every key under ``prefix`` deleted, as a Redis restarted without persistence has it."""
    import redis as redis_py

    with redis_py.Redis.from_url(redis.url) as client:
        keys = list(client.scan_iter(f"{prefix}*"))
        assert keys, f"no keys under {prefix}"
        client.delete(*keys)


@pytest.mark.parametrize("writer", ["controller", "admin"])
def test_a_share_written_after_the_store_lost_its_data_is_applied_not_undone(
    fleet: StartReplica, redis: RedisProcess, writer: str
) -> None:
    """The store's generation count restarts at 1 after data loss; a write must still land
    above what the replicas hold, or they ignore it and re-seed the store with their older
    share. A long heartbeat keeps the replicas from re-seeding first."""
    prefix = f"lost-{writer}"
    state = {"url": redis.url, "key_prefix": prefix, "heartbeat_seconds": 30.0,
             "replica_ttl_seconds": 60.0}  # fmt: skip
    replicas = [fleet(state=state), fleet(state=state)]
    for share in (0.1, 0.2, 0.3):  # generation 3 or more on every replica
        replicas[0].set_share(share)
    wait_until(lambda: all(traffic(r)["student_share"] == 0.3 for r in replicas), 5, "the share")
    held = max(traffic(r)["generation"] for r in replicas)
    assert held >= 3
    controller = StoreFleet(redis.url, "digits", key_prefix=prefix)
    try:
        controller.read()  # a running controller has read the registry at every tick
        _lose_the_stores_data(redis, prefix)  # the share and the registry
        if writer == "controller":
            controller.set_share(0.7)
        else:
            replicas[1].set_share(0.7)
    finally:
        controller.close()
    wait_until(lambda: all(traffic(r)["student_share"] == 0.7 for r in replicas), 5,
               "every replica to apply the share written after the loss")  # fmt: skip
    assert all(traffic(r)["generation"] > held for r in replicas)


def test_labels_posted_to_other_replicas_join_their_predictions_once(
    fleet: StartReplica, test_split: Split
) -> None:
    replicas = [fleet(share=0.5) for _ in range(3)]
    rows, labels = test_split.x[:300], test_split.y[:300]
    for i in range(300):
        response = infer(replicas[i % 3].url, f"fleet-{i}", rows[i : i + 1])
        assert response.status_code == 200, response.text
    for i in range(300):  # every label to another replica than the one that answered
        response = label(replicas[(i + 1) % 3].url, f"fleet-{i}", int(labels[i]))
        assert response.status_code == 200, response.text
    counted = sum(replica.total("gateway_feedback_total") for replica in replicas)
    assert counted == 300
    again = label(replicas[2].url, "fleet-7", int(labels[7]))  # a retry: answered alike, once
    assert again.status_code == 200, again.text
    assert sum(replica.total("gateway_feedback_total") for replica in replicas) == 300
    other = label(replicas[2].url, "fleet-7", (int(labels[7]) + 1) % 10)
    assert other.status_code == 409, other.text


def test_a_label_posted_to_two_replicas_at_once_is_counted_once(fleet: StartReplica) -> None:
    """Both answered 200 (the second is a retry of the same label), counted once in all."""
    one, two = fleet(), fleet()
    row = np.zeros((1, 64), np.float32)
    outcomes = []
    for i in range(30):
        assert infer(one.url, f"race-{i}", row).status_code == 200
        barrier = threading.Barrier(2)

        def post(
            replica: TestGateway,
            request_id: str = f"race-{i}",
            barrier: threading.Barrier = barrier,
        ) -> int:
            barrier.wait()
            return label(replica.url, request_id, 3).status_code

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            outcomes.append(sorted(pool.map(post, (one, two))))
    assert outcomes == [[200, 200]] * 30  # the same label twice: a retry, answered alike
    counted = one.total("gateway_feedback_total") + two.total(
        "gateway_feedback_total")  # fmt: skip
    assert counted == 30


def test_redis_killed_under_load_fails_no_request_and_the_fleet_recovers(
    fleet: StartReplica, redis: RedisProcess
) -> None:
    replicas = [fleet(), fleet()]
    replicas[0].set_share(0.3)
    wait_until(lambda: all(traffic(r)["student_share"] == 0.3 for r in replicas), 5, "the share")
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]  # requests answered so far, by all four clients

    def client(worker: int) -> None:
        row = np.zeros((1, 64), np.float32)
        with httpx.Client(timeout=10) as session:
            n = 0
            while not stop.is_set():
                url = replicas[(worker + n) % 2].url
                response = session.post(f"{url}/v2/models/digits/infer", json={
                    "id": f"load-{worker}-{n}", "inputs": [{"name": "pixels", "shape": [1, 64],
                    "datatype": "FP32", "data": row.ravel().tolist()}]})  # fmt: skip
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                n += 1
                answered[0] += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: answered[0] >= 100, 30, "load to build up before the outage")
        redis.kill()
        wait_until(lambda: all(r.metric("gateway_state_store_up", model="digits") == 0
                               for r in replicas), 10, "the outage to show")  # fmt: skip
        during = [infer(replicas[1].url, f"during-{i}", np.zeros((1, 64), np.float32))
                  for i in range(20)]  # fmt: skip
        assert all(response.status_code == 200 for response in during)
        # a label this replica cannot join: 503, retryable; one it made itself still joins
        assert label(replicas[0].url, "during-0", 3).status_code == 503
        assert label(replicas[1].url, "during-1", 3).status_code == 200
        refused = httpx.put(f"{replicas[0].url}/admin/traffic", json={"student_share": 0.9},
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
        assert refused.status_code == 503 and "state store" in refused.json()["error"]
        assert all(traffic(r)["student_share"] == 0.3 for r in replicas)  # fail static
        redis.start()
        wait_until(lambda: all(r.metric("gateway_state_store_up", model="digits") == 1
                               for r in replicas), 10, "every replica to reconnect")  # fmt: skip
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert answered[0] > 100
    for replica in replicas:
        text = replica.metrics_text()
        assert read_total(text, "gateway_state_store_errors_total") > 0
        assert read_total(text, "gateway_state_store_fallbacks_total", op="remember") > 0
    # the restarted (empty) store was seeded with the share the replicas served, and works
    assert traffic(replicas[1])["fleet"]["student_share"] == 0.3
    replicas[1].set_share(0.6)
    wait_until(lambda: traffic(replicas[0])["student_share"] == 0.6, FLEET_APPLIES_WITHIN + 1,
               "a share change after the outage")  # fmt: skip


def test_two_workers_count_every_request_once_and_share_one_share(
    redis: RedisProcess, tmp_path: Path
) -> None:
    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "DISTILL_GATEWAY_STATE__URL": redis.url,
                   "DISTILL_GATEWAY_STATE__KEY_PREFIX": "test-workers",
                   "DISTILL_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}  # fmt: skip
    with (tmp_path / "workers.log").open("wb") as log:
        command = [str(BIN / "distill-gateway"), "--port", str(port), "--grpc-port",
                   str(grpc_port), "--workers", "2"]  # fmt: skip
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        replica_ids: set[str] = set()

        def both_workers_answer() -> bool:
            try:
                with httpx.Client() as fresh:  # a new connection lands on either worker
                    replica_ids.add(fresh.get(f"{url}/admin/traffic").json()["replica_id"])
            except httpx.HTTPError:
                return False
            return len(replica_ids) == 2

        wait_until(both_workers_answer, 60, "both workers to answer")
        before = read_total(httpx.get(f"{url}/metrics").text, "gateway_requests_total")
        for i in range(60):
            with httpx.Client() as fresh:
                assert infer_on(fresh, url, i).status_code == 200
        # gRPC too: both workers bound the gRPC port (SO_REUSEPORT); a new channel per call
        pixels = triton_grpc.InferInput("pixels", [1, 64], "FP32")
        pixels.set_data_from_numpy(np.zeros((1, 64), np.float32))
        for _ in range(20):
            with triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
                assert client.infer("digits", [pixels]).as_numpy("logits").shape == (1, 10)
        text = httpx.get(f"{url}/metrics").text
        assert read_total(text, "gateway_requests_total") - before == 80
        assert read_total(text, "gateway_requests_total", protocol="grpc") == 20
        response = httpx.put(f"{url}/admin/traffic", json={"student_share": 0.7},
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
        assert response.status_code == 200

        def every_worker_applied() -> bool:
            seen = {}
            for _ in range(10):
                with httpx.Client() as fresh:
                    state = fresh.get(f"{url}/admin/traffic").json()
                seen[state["replica_id"]] = state["student_share"]
            return len(seen) == 2 and set(seen.values()) == {0.7}

        wait_until(every_worker_applied, 5, "both workers to apply the share")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


def test_a_worker_killed_by_a_signal_stops_the_group_with_128_plus_the_signal(
    redis: RedisProcess, tmp_path: Path
) -> None:
    """An OOM kill or a segfault is not a clean exit: the supervisor exits 137 for a worker that
    SIGKILL ended (as a shell reports it), so Kubernetes' status says why the pod restarted."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "DISTILL_GATEWAY_STATE__URL": redis.url,
                   "DISTILL_GATEWAY_STATE__KEY_PREFIX": "test-workers-killed",
                   "DISTILL_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}  # fmt: skip
    log_path = tmp_path / "workers.log"
    with log_path.open("wb") as log:
        command = [str(BIN / "distill-gateway"), "--port", str(port), "--workers", "2"]
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        replica_id: list[str] = []

        def a_worker_answers() -> bool:
            try:
                replica_id.append(httpx.get(f"{url}/admin/traffic").json()["replica_id"])
            except httpx.HTTPError:
                return False
            return True

        wait_until(a_worker_answers, 60, "a worker to answer")
        worker = int(replica_id[-1].rsplit("-", 1)[1])  # <hostname>-<pid>
        assert worker != process.pid
        os.kill(worker, signal.SIGKILL)
        assert process.wait(60) == 128 + signal.SIGKILL
        assert f"worker {worker} was killed by SIGKILL (exit 137)" in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def infer_on(client: httpx.Client, url: str, i: int) -> httpx.Response:
    body = {"id": f"w-{i}", "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                        "data": [0.0] * 64}]}  # fmt: skip
    return client.post(f"{url}/v2/models/digits/infer", json=body)


def test_workers_without_a_shared_store_is_a_clear_start_up_error() -> None:
    result = subprocess.run([str(BIN / "distill-gateway"), "--workers", "2", "--port",
                             str(free_port())], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("DISTILL_GATEWAY_")})  # fmt: skip
    assert result.returncode == 2
    assert "--workers 2 needs a state store" in result.stderr
    assert "redis://" in result.stderr


def test_a_fleet_over_tls_with_a_password(tmp_path: Path) -> None:
    """rediss:// with the CA in the URL, the password from DISTILL_GATEWAY_STATE__PASSWORD; the
    controller's side reads the same registry."""
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    files = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    certificate.cert_chain_pems[0].write_to_path(str(files[0]))
    certificate.private_key_pem.write_to_path(str(files[1]))
    authority.cert_pem.write_to_path(str(files[2]))
    password = "fleet-password-0123456789"
    server = RedisProcess(tmp_path / "redis", tls=files, password=password).start()
    try:
        config = {"state": {"url": server.url}, "shadow": {"sample_rate": 0.0}}
        given = {"DISTILL_GATEWAY_STATE__PASSWORD": password}
        replica = TestGateway(tmp_path, config, environment=given).start()
        not_it = {"DISTILL_GATEWAY_STATE__PASSWORD": "not-the-password"}
        wrong = TestGateway(tmp_path, config, environment=not_it).start()
        try:
            assert replica.set_share(0.4)["fleet"]["student_share"] == 0.4
            assert replica.metric("gateway_state_store_up", model="digits") == 1
            response = infer(replica.url, "tls-1", np.zeros((1, 64), np.float32))
            assert response.status_code == 200
            assert label(replica.url, "tls-1", 3).status_code == 200
            fleet = StoreFleet(server.url, "digits", password=password)
            assert fleet.read()[traffic(replica)["replica_id"]].student_share == 0.4
            fleet.close()
            # a wrong password is a store that does not answer: serving goes on, the store is down
            assert wrong.metric("gateway_state_store_up", model="digits") == 0
            assert infer(wrong.url, "tls-2", np.zeros((1, 64), np.float32)).status_code == 200
            assert "AuthenticationError: invalid username-password pair" in wrong.log()
        finally:
            replica.stop()
            wrong.stop()
    finally:
        server.stop()


def test_a_student_put_on_one_replica_is_served_by_every_replica_and_only_at_share_0(
    fleet: StartReplica, redis: RedisProcess, request: pytest.FixtureRequest
) -> None:
    selection = registry.select(registry.load(REGISTRY_PATH), 0.02, "latency")
    assert selection is not None and selection.runner_up is not None
    chosen, other = selection.chosen["id"], selection.runner_up["id"]
    first, second = fleet(), fleet()

    response = CLIENT.put(f"{first.url}/admin/student", json={"model_id": chosen},
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip

    assert response.status_code == 200, response.text
    wait_until(lambda: traffic(second)["student_id"] == chosen, 5, "the student to spread")
    assert traffic(second)["fleet"]["student_id"] == chosen
    newcomer = fleet()  # its config names the shipped student: the fleet's wins
    wait_until(lambda: traffic(newcomer)["student_id"] == chosen, 5, "the newcomer to follow")
    # the controller's side: every registration reports it, so setting it again confirms at once
    prefix = f"test-{request.node.name}"[:60].replace("[", "-").replace("]", "")
    store = StoreFleet(redis.url, "digits", key_prefix=prefix)
    store.set_student(chosen)
    assert {r.student_id for r in store.replicas} == {chosen}

    # at a share above 0, neither a replica nor the controller may change it
    second.set_share(0.1)
    wait_until(lambda: traffic(first)["student_share"] == 0.1, 5, "the share to spread")
    refused = CLIENT.put(f"{first.url}/admin/student", json={"model_id": other},
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
    assert refused.status_code == 409, refused.text
    assert "share is 0.1" in refused.json()["error"]
    with pytest.raises(GatewaysDisagree, match=r"share is 0\.1"):
        store.set_student(other)
    store.close()
    assert {traffic(r)["student_id"] for r in (first, second, newcomer)} == {chosen}
