"""Several models behind one gateway (issue 27), in process: the config's ``models:`` list, the
routes per model, the admin API per model, metrics per model; the real-process tests (real
ONNX pairs, tritonclient, Redis, a hung teacher) are in test_models_per_gateway_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from gateway.app import create_app
from gateway.config import ConfigError, GatewaySettings, load_settings
from gateway.grpc_server import attach, create_grpc_server
from gateway.metrics import GatewayMetrics
from gateway.protocol import TrafficState
from gateway.runtime import Runtime
from gateway.service import GatewayService
from models import STUDENT_PATH, TEACHER_PATH
from tests.fake_backend import TOKEN, Behaviour, ScriptedBackend
from tests.servers import free_port

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BODY = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


# -- the config -------------------------------------------------------------------------------


def test_entries_take_the_top_level_keys_as_defaults_and_override_them(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        f"""
shadow: {{sample_rate: 0.2, workers: 2}}
traffic: {{student_share: 0.1}}
models:
  - name: digits
  - name: other
    version: "3"
    teacher: {{path: {TEACHER_PATH}}}
    student: {{path: {STUDENT_PATH}, timeout_ms: 50}}
    shadow: {{sample_rate: 0.5}}
""",
    )
    first, second = load_settings(config).served()
    assert (first.model, first.model_version, second.model, second.model_version) == (
        "digits", "1", "other", "3")  # fmt: skip
    assert (first.shadow.sample_rate, first.shadow.workers) == (0.2, 2)
    # a section an entry sets overrides key by key: its other keys stay the defaults'
    assert (second.shadow.sample_rate, second.shadow.workers) == (0.5, 2)
    assert first.traffic.student_share == second.traffic.student_share == 0.1
    # a backend replaces the default whole (its cost_per_hour is not the default student's)
    assert (second.student.timeout_ms, second.student.cost_per_hour) == (50, 0.0)
    assert first.overload is second.overload  # gateway-wide keys: one object for every model


def test_the_single_model_form_is_a_one_entry_list(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "model: solo\ntraffic: {student_share: 0.3}\n"))
    (served,) = settings.served()
    assert (served.model, served.traffic.student_share) == ("solo", 0.3)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("[{name: a}, {name: a}]", "'a' is given to more than one entry"),
        ("[{name: ok}, {name: 'has space'}]", "models.1.name"),
        ("[{name: '..'}]", "'..' is not a model name"),
        ("[{name: a, admin: {port: 9}}]", "models.0.admin"),  # gateway-wide: top level only
        ("[{name: a, feedback: {token: abcdefabcdefabcdef}}]", "models.0.feedback.token"),
        ("[]", "models"),
        ("[{name: a, student: {path: nowhere.onnx}}]", "models (a): student.path: no such file"),
    ],
)
def test_a_bad_models_list_fails_start_up_naming_the_entry(
    tmp_path: Path, entries: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(write(tmp_path, f"models: {entries}\n"))


def test_each_entry_keeps_its_student_inside_its_own_deadline(tmp_path: Path) -> None:
    config = "models: [{name: a}, {name: b, resilience: {request_timeout_ms: 500}}]\n"
    with pytest.raises(ConfigError, match=r"models\.1 \(b\): student.timeout_ms"):
        load_settings(write(tmp_path, config))


# -- two models in one process ---------------------------------------------------------------


class TwoModels:
    def __init__(self, client: httpx.AsyncClient, runtime: Runtime,
                 backends: dict[str, dict[str, ScriptedBackend]],
                 registry: CollectorRegistry) -> None:  # fmt: skip
        self.client, self.runtime, self.backends, self.registry = (
            client,
            runtime,
            backends,
            registry,
        )

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def two_models(names: tuple[str, ...] = ("a", "b")) -> AsyncIterator[TwoModels]:
    settings = GatewaySettings.model_validate(
        {"models": [{"name": name} for name in names], "shadow": {"sample_rate": 0.0}}
    )
    registry = CollectorRegistry()
    services, backends = {}, {}
    for index, served in enumerate(settings.served()):
        pair = {"teacher": ScriptedBackend("teacher", index), "student": ScriptedBackend(
            "student", index + 5)}  # fmt: skip
        for backend in pair.values():
            await backend.load()
        metrics = GatewayMetrics(registry, served.model, {"teacher": 3.0, "student": 0.5})
        services[served.model] = GatewayService(served, dict(pair), metrics)
        backends[served.model] = pair
    runtime = Runtime(settings, services)
    app = create_app(runtime, registry, SecretStr(TOKEN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield TwoModels(client, runtime, backends, registry)


def run(scenario: Callable[[TwoModels], Awaitable[None]]) -> None:
    async def main() -> None:
        async with two_models() as gateway:
            await scenario(gateway)

    asyncio.run(main())


def test_each_model_answers_on_its_own_routes_and_an_unknown_one_names_them() -> None:
    async def scenario(gateway: TwoModels) -> None:
        for index, model in enumerate(("a", "b")):
            answer = await gateway.client.post(f"/v2/models/{model}/infer", json=BODY)
            assert answer.status_code == 200 and answer.json()["model_name"] == model
            assert answer.json()["outputs"][0]["data"].index(1.0) == index  # its own teacher
            metadata = await gateway.client.get(f"/v2/models/{model}")
            assert metadata.json()["name"] == model
        for path in ("/v2/models/c/infer", "/v2/models/c", "/v2/models/c/ready",
                     "/admin/models/c/traffic"):  # fmt: skip
            method = "POST" if path.endswith("infer") else "GET"
            unknown = await gateway.client.request(method, path, json=BODY)
            assert unknown.status_code == 404
            assert unknown.json()["error"] == "unknown model 'c'; this gateway serves 'a', 'b'"

    run(scenario)


def test_the_model_list_and_the_repository_index_say_each_models_state() -> None:
    async def scenario(gateway: TwoModels) -> None:
        gateway.backends["b"]["teacher"].ready = False
        listed = (await gateway.client.get("/v2/models")).json()["models"]
        assert [(m["name"], m["versions"], m["ready"]) for m in listed] == [
            ("a", ["1"], True), ("b", ["1"], False)]  # fmt: skip
        index = (await gateway.client.post("/v2/repository/index")).json()
        assert [(m["name"], m["state"]) for m in index] == [("a", "READY"), ("b", "UNAVAILABLE")]
        ready_only = await gateway.client.post("/v2/repository/index", json={"ready": True})
        assert [m["name"] for m in ready_only.json()] == ["a"]
        bad = await gateway.client.post("/v2/repository/index", json={"ready": "maybe"})
        assert bad.status_code == 422 and "ready" in bad.json()["error"]
        # the server stays ready while any model is (b's teacher down on every replica alike
        # must not take a down too); b's own readiness says it
        assert (await gateway.client.get("/v2/health/ready")).status_code == 200
        assert (await gateway.client.get("/v2/models/a/ready")).status_code == 200
        assert (await gateway.client.get("/v2/models/b/ready")).status_code == 503
        gateway.backends["a"]["teacher"].ready = False
        assert (await gateway.client.get("/v2/health/ready")).status_code == 503
        load = await gateway.client.post("/v2/repository/models/a/load")
        assert load.status_code == 501 and "fixed by the gateway's config" in load.json()["error"]

    run(scenario)


def test_each_models_share_is_its_own_and_the_unnamed_route_refuses_to_guess() -> None:
    async def scenario(gateway: TwoModels) -> None:
        put = await gateway.client.put("/admin/models/b/traffic", json={"student_share": 1.0},
                                       headers=ADMIN)  # fmt: skip
        assert put.status_code == 200
        assert (put.json()["model"], put.json()["student_share"]) == ("b", 1.0)
        read_a = (await gateway.client.get("/admin/models/a/traffic")).json()
        assert (read_a["model"], read_a["student_share"]) == ("a", 0.0)
        served = {model: {(await gateway.client.post(f"/v2/models/{model}/infer",
                                                     json=BODY)).headers["x-served-by"]
                          for _ in range(20)} for model in ("a", "b")}  # fmt: skip
        assert served == {"a": {"teacher"}, "b": {"student"}}
        assert gateway.metric("gateway_traffic_share", model="b", backend="student") == 1.0
        assert gateway.metric("gateway_traffic_share", model="a", backend="student") == 0.0
        for method, path in (("GET", "/admin/traffic"), ("PUT", "/admin/traffic"),
                             ("PUT", "/admin/student")):  # fmt: skip
            body = {"student_share": 0.5} if "traffic" in path else {"model_id": "ab12"}
            refused = await gateway.client.request(method, path, json=body, headers=ADMIN)
            assert refused.status_code == 409, path
            assert "serves 2 models ('a', 'b')" in refused.json()["error"]
            assert f"/admin/models/<model>/{path.rsplit('/', 1)[1]}" in refused.json()["error"]
        unauthorized = await gateway.client.put("/admin/models/a/traffic",
                                                json={"student_share": 0.5})  # fmt: skip
        assert unauthorized.status_code == 401
        assert gateway.metric("gateway_admin_auth_failures_total", model="a",
                              reason="missing") == 1  # fmt: skip
        assert gateway.runtime.services["a"].split.student_share == 0.0

    run(scenario)


def test_one_models_failing_student_is_that_models_alone() -> None:
    async def scenario(gateway: TwoModels) -> None:
        for model in ("a", "b"):
            await gateway.client.put(f"/admin/models/{model}/traffic",
                                     json={"student_share": 1.0}, headers=ADMIN)  # fmt: skip
        gateway.backends["a"]["student"].behaviour = Behaviour.FAIL
        for _ in range(10):
            for model in ("a", "b"):
                answer = await gateway.client.post(f"/v2/models/{model}/infer", json=BODY)
                assert answer.status_code == 200
        fell_back = gateway.metric("gateway_fallbacks_total", model="a", from_backend="student",
                                   to_backend="teacher", reason="error")  # fmt: skip
        assert fell_back >= 5  # until a's circuit opened; then circuit_open
        assert gateway.runtime.services["a"]._breakers["student"].state.value == "open"
        assert gateway.runtime.services["b"]._breakers["student"].state.value == "closed"
        assert gateway.metric("gateway_requests_total", model="b", backend="student",
                              code="200", protocol="http") == 10  # fmt: skip

    run(scenario)


def test_the_exposition_has_one_family_per_name_with_both_models_series() -> None:
    async def scenario(gateway: TwoModels) -> None:
        text = generate_latest(gateway.registry).decode()
        types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
        assert len(types) == len(set(types))  # Prometheus refuses a name typed twice
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for name in ("gateway_requests", "gateway_backend_up", "gateway_inference_cost_dollars"):
            assert {s.labels["model"] for s in families[name].samples} == {"a", "b"}, name

    run(scenario)


def test_grpc_metadata_and_index_say_the_same_as_http() -> None:
    async def scenario(gateway: TwoModels) -> None:
        port = free_port()
        server = create_grpc_server("127.0.0.1", port, gateway.runtime.settings.max_request_bytes)
        attach(server, gateway.runtime)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                call = stub.ModelMetadata(pb.ModelMetadataRequest(name="b"))
                answer, sent = await call, dict(await call.initial_metadata())
                http = (await gateway.client.get("/v2/models/b")).json()
                assert answer.name == http["name"] == "b"
                assert [t.name for t in answer.inputs] == [t["name"] for t in http["inputs"]]
                assert sent["x-student-id"] == (http["student_id"] or "")
                index = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
                assert [(m.name, m.state) for m in index.models] == [("a", "READY"),
                                                                     ("b", "READY")]  # fmt: skip
                with pytest.raises(grpc.aio.AioRpcError) as unknown:
                    await stub.ModelMetadata(pb.ModelMetadataRequest(name="c"))
                assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
                assert "serves 'a', 'b'" in str(unknown.value.details())
        finally:
            await server.stop(grace=None)

    run(scenario)


def test_a_models_shadow_rate_moves_at_run_time_and_only_its_own() -> None:
    async def scenario(gateway: TwoModels) -> None:
        path = "/admin/models/b/shadow"
        read = (await gateway.client.get(path)).json()
        assert read == {"model": "b", "sample_rate": 0.0, "configured": 0.0}
        refused = await gateway.client.put(path, json={"sample_rate": 1.0})
        assert refused.status_code == 401
        for bad, words in (({"sample_rate": 1.5}, "sample_rate"), ({"rate": 0.5}, "rate"),
                           ({"model": "a", "sample_rate": 0.5}, "names model 'a'")):  # fmt: skip
            answer = await gateway.client.put(path, json=bad, headers=ADMIN)
            assert answer.status_code in (400, 422) and words in answer.json()["error"], bad
        put = await gateway.client.put(path, json={"sample_rate": 1.0}, headers=ADMIN)
        assert put.json() == {"model": "b", "sample_rate": 1.0, "configured": 0.0}
        for model in ("a", "b"):
            for _ in range(5):
                await gateway.client.post(f"/v2/models/{model}/infer", json=BODY)
        await asyncio.gather(*(s.shadow.drain() for s in gateway.runtime.services.values()))
        compared = {m: gateway.metric("gateway_shadow_comparisons_total", model=m)
                    for m in ("a", "b")}  # fmt: skip
        assert compared == {"a": 0, "b": 5}  # every one of b's requests, none of a's

    run(scenario)


def test_the_traffic_answer_reads_with_keys_a_newer_gateway_may_add() -> None:
    """A controller reads gateways of the next version during a rolling upgrade."""
    read = TrafficState.model_validate_json(
        b'{"model": "a", "student_share": 0.25, "generation": 3, "said_later": true}'
    )
    assert (read.model, read.student_share, read.generation) == ("a", 0.25, 3)


def test_a_model_cannot_take_a_v2_routes_name(tmp_path: Path) -> None:
    for config in ("model: stats\n", "models: [{name: a}, {name: stats}]\n"):
        with pytest.raises(ConfigError, match="/v2/models/stats is a V2 route"):
            load_settings(write(tmp_path, config))
