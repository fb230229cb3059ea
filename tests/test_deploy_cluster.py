"""What a real cluster would show and offline validation cannot: each property is read from the
manifests (and, for the controller's command line, run through a real shell)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from typer.core import TyperGroup

from controller.cli import app as canary_app
from controller.policy import Policy
from controller.rollout import EXIT_REFUSED, EXIT_ROLLBACK_UNCONFIRMED, EXIT_ROLLED_BACK
from controller.sources.prometheus import SELECTOR
from gateway.config import GatewaySettings
from tests.manifests import ROOT, by_kind, named, pod_templates

DOCKER = ROOT / "deploy" / "docker"


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _policy() -> Policy:
    config_map = named("ConfigMap", "distill-canary-policy")
    return Policy.model_validate(yaml.safe_load(config_map["data"]["policy.yaml"]))


def _gateway_settings() -> GatewaySettings:
    config_map = named("ConfigMap", "distill-gateway-config")
    return GatewaySettings(**yaml.safe_load(config_map["data"]["gateway.yaml"]))


def _port(pod: dict[str, Any], name: str) -> int:
    for container in pod["containers"]:
        for port in container.get("ports", []):
            if port["name"] == name:
                return int(port["containerPort"])
    raise AssertionError(f"no container port named {name}")


# -- the controller Job ---------------------------------------------------------------------


def test_a_finished_rollout_is_never_run_again_by_the_job() -> None:
    job = by_kind("Job")[0]
    spec = job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    fail_job = next(rule for rule in rules if rule["action"] == "FailJob")
    assert fail_job["onExitCodes"]["containerName"] == "controller"
    # bad policy, rolled back, rollback unconfirmed, refused: none of them may be retried
    assert set(fail_job["onExitCodes"]["values"]) == {
        2, EXIT_ROLLED_BACK, EXIT_ROLLBACK_UNCONFIRMED, EXIT_REFUSED,
    }  # fmt: skip
    ignored = next(rule for rule in rules if rule["action"] == "Ignore")
    assert ignored["onPodConditions"][0]["type"] == "DisruptionTarget"
    policy = _policy()
    longest = len(policy.steps) * policy.max_step_seconds
    assert spec["activeDeadlineSeconds"] >= longest
    assert spec["ttlSecondsAfterFinished"] > 0


def _job_argv(tmp_path: Path) -> list[str]:
    """The Job's `sh -c` line, run by a real shell with a stand-in for distill-canary (prints the
    argv it got)."""
    job = by_kind("Job")[0]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["sh", "-c"]
    (script,) = container["args"]
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "distill-canary").write_text(
        f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"
    )
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {e["name"]: e.get("value", "") for e in container["env"] if "value" in e}
    env.update(POD_NAMESPACE="ml-prod", PATH=f"{stubs}:{os.environ['PATH']}")
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    argv: list[str] = json.loads(result.stdout)
    return argv


def test_the_jobs_command_line_is_what_the_controller_expects(tmp_path: Path) -> None:
    argv = _job_argv(tmp_path)
    group = typer.main.get_command(canary_app)
    assert isinstance(group, TyperGroup) and argv[0] == "run"
    context = group.make_context("distill-canary", list(argv))
    run = group.get_command(context, "run")
    assert run is not None
    params = run.make_context("run", argv[1:], parent=context).params  # parsed as `run` would
    # the replicas are found where the gateways register themselves, at the address they
    # advertise (the admin port the controller is let through to)
    settings = _gateway_settings()
    assert not params["gateway"] and params["state_url"] == settings.state.url
    redis = named("Service", "distill-redis")["spec"]["ports"][0]["port"]
    assert settings.state.url.startswith(f"rediss://distill-redis:{redis}/")  # TLS only
    gateway = pod_templates()["distill-gateway"]["containers"][0]
    advertised = next(e["value"] for e in gateway["env"]
                      if e["name"] == "DISTILL_GATEWAY_STATE__ADVERTISE_URL")  # fmt: skip
    assert advertised == f"http://$(POD_IP):{settings.admin.port}"
    assert params["name"] == "student-v1"
    assert SELECTOR.match(params["prometheus_selector"])
    assert params["prometheus_selector"] == 'namespace="ml-prod",job="distill-gateway"'
    assert params["metrics_host"] == "0.0.0.0"  # reachable from the pod network
    assert params["wait_for_lease"] >= _policy().lease_seconds  # a replacement pod waits
    assert params["on_sigterm"].value == "persist"
    mounts = {m["name"]: m["mountPath"] for m in by_kind("Job")[0]["spec"]["template"]["spec"][
        "containers"][0]["volumeMounts"]}  # fmt: skip
    assert str(params["state"]).startswith(mounts["state"])
    assert str(params["policy"]).startswith(mounts["policy"])


# -- pod security and availability ----------------------------------------------------------


@pytest.mark.parametrize("workload", sorted(pod_templates()))
def test_every_pod_meets_pod_security_restricted(workload: str) -> None:
    pod = pod_templates()[workload]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False  # none of them calls the API
    assert pod["enableServiceLinks"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in _containers(pod):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
    for container in pod["containers"]:
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], container["name"]


def test_triton_runs_as_nvidias_non_root_user() -> None:
    assert pod_templates()["distill-triton"]["securityContext"]["runAsUser"] == 1000


def test_service_link_variables_could_not_break_the_gateways_settings() -> None:
    """Kubernetes injects <SERVICE>_SERVICE_HOST, <SERVICE>_PORT, ... for every Service, and the
    settings read every DISTILL_GATEWAY_* variable; links are off, and even on they must load."""
    injected = {}
    for service in by_kind("Service"):
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        for port in service["spec"]["ports"]:
            injected[f"{prefix}_SERVICE_HOST"] = "10.0.0.1"
            injected[f"{prefix}_SERVICE_PORT"] = str(port["port"])
            injected[f"{prefix}_PORT"] = f"tcp://10.0.0.1:{port['port']}"
            injected[f"{prefix}_PORT_{port['port']}_TCP"] = f"tcp://10.0.0.1:{port['port']}"
    probe = "from gateway.config import load_settings; load_settings(None); print('ok')"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**os.environ, **injected})  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("app", ["distill-gateway", "distill-triton"])
def test_serving_pods_survive_a_node_drain(app: str) -> None:
    selects = {"app.kubernetes.io/name": app}
    budgets = [b for b in by_kind("PodDisruptionBudget")
               if b["spec"]["selector"]["matchLabels"] == selects]  # fmt: skip
    assert len(budgets) == 1 and budgets[0]["spec"]["maxUnavailable"] == 1
    pod = pod_templates()[app]
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys
    deployment = named("Deployment", app)
    owned_by_hpa = any(h["spec"]["scaleTargetRef"]["name"] == app
                       for h in by_kind("HorizontalPodAutoscaler"))  # fmt: skip
    if owned_by_hpa:
        assert "replicas" not in deployment["spec"]
    else:
        assert deployment["spec"]["replicas"] >= 2  # a budget of 1 on one replica blocks drains


def test_liveness_gives_a_busy_event_loop_time() -> None:
    for workload in ("distill-gateway", "distill-triton"):
        probe = pod_templates()[workload]["containers"][0]["livenessProbe"]
        assert probe["timeoutSeconds"] >= 5
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 30


def test_triton_serves_only_the_student() -> None:
    configs = named("ConfigMap", "distill-triton-model-configs")["data"]
    assert set(configs) == {"student.pbtxt"}
    init = pod_templates()["distill-triton"]["initContainers"][0]
    assert "teacher" not in " ".join(init["args"])
    assert _gateway_settings().student.kind == "triton"  # and the teacher runs in the gateway
    assert _gateway_settings().teacher.kind == "onnx"


# -- who may reach what ---------------------------------------------------------------------


def _ingress(app: str) -> dict[int, list[dict[str, Any]]]:
    """Port -> the `from` peers allowed ([] = anyone), from the NetworkPolicy selecting ``app``."""
    selects = {"app.kubernetes.io/name": app}
    (policy,) = [p for p in by_kind("NetworkPolicy")
                 if p["spec"]["podSelector"]["matchLabels"] == selects]  # fmt: skip
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    allowed: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["port"] not in allowed, f"port {port['port']} in two rules"
            allowed[port["port"]] = rule.get("from", [])
    return allowed


MONITORING = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def _pods_of(app: str) -> list[dict[str, Any]]:
    return [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": app}}}]


@pytest.mark.parametrize(("app", "expected"), [
    ("distill-gateway", {"http": [], "grpc": [], "admin": _pods_of("distill-canary"),
                         "metrics": MONITORING}),
    ("distill-triton", {"http": _pods_of("distill-gateway"), "grpc": _pods_of("distill-gateway"),
                        "metrics": MONITORING}),
    ("distill-canary", {"metrics": MONITORING}),
    ("distill-redis", {"redis": [*_pods_of("distill-gateway"), *_pods_of("distill-canary")]}),
])  # fmt: skip
def test_network_policies_admit_each_port_from_its_clients_only(
    app: str, expected: dict[str, list[dict[str, Any]]]
) -> None:
    workload = next(name for name in pod_templates() if name.startswith(app))
    pod = pod_templates()[workload]
    allowed = _ingress(app)
    served = {port["name"]: port["containerPort"] for c in pod["containers"]
              for port in c.get("ports", [])}  # fmt: skip
    assert set(served) == set(expected)  # every port the pods serve has a rule
    assert set(allowed) == set(served.values())  # and nothing else is opened
    for name, peers in expected.items():
        assert allowed[served[name]] == peers, name


def test_the_public_service_exposes_neither_admin_nor_metrics() -> None:
    public = named("Service", "distill-gateway")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http", "grpc"]
    settings = _gateway_settings()
    pod = pod_templates()["distill-gateway"]
    assert settings.grpc.port == _port(pod, "grpc")
    assert settings.admin.port == _port(pod, "admin")
    assert settings.metrics.port == _port(pod, "metrics")
    assert settings.admin.port != settings.metrics.port  # the policies tell them apart


# -- Prometheus Operator --------------------------------------------------------------------


def test_prometheus_operator_selects_and_scrapes_often_enough() -> None:
    monitors = by_kind("ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {
        "distill-gateway", "distill-canary", "distill-triton"}  # fmt: skip
    for resource in (*monitors, *by_kind("PrometheusRule")):
        assert resource["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    analysis_interval = _policy().interval_seconds
    for monitor in monitors:
        for endpoint in monitor["spec"]["endpoints"]:
            seconds = int(re.fullmatch(r"(\d+)s", endpoint["interval"]).group(1))  # type: ignore[union-attr]
            assert 4 * seconds <= analysis_interval, monitor["metadata"]["name"]
        # job = the app's name, as in prometheus.yml, so the rules and the controller's
        # --prometheus-selector job="distill-gateway" read the same series everywhere
        assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"


# -- the images -----------------------------------------------------------------------------


def _locked(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", path.read_text(), re.MULTILINE)
    return {name.lower().replace("_", "-"): version for name, version in pins}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.parametrize(("flavour", "runtime"), [("cpu", "onnxruntime"),
                                                   ("cuda", "onnxruntime-gpu")])  # fmt: skip
def test_each_image_installs_pinned_serving_dependencies_only(flavour: str, runtime: str) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serving = {_name(r) for r in pyproject["dependencies"]}
    controller = {_name(r) for r in pyproject["optional-dependencies"]["controller"]}
    lock = DOCKER / f"requirements-{flavour}.lock"
    locked = _locked(lock)
    wanted = (serving - {"onnxruntime-gpu"}) | {runtime} | controller
    assert wanted <= set(locked), wanted - set(locked)
    for heavy in ("torch", "matplotlib", "scikit-learn", "onnx", "pytest", "mypy"):
        assert heavy not in locked, heavy
    lines = lock.read_text().splitlines()
    for number, line in enumerate(lines):  # every pin is followed by its hashes
        if re.match(r"^[A-Za-z0-9_.\-]+==", line):
            assert lines[number + 1].strip().startswith("--hash=sha256:"), line
    dockerfile = (DOCKER / f"Dockerfile.{flavour}").read_text()
    assert dockerfile.count("\nFROM ") >= 2  # multi-stage: no build tools in the final image
    assert f"requirements-{flavour}.lock" in dockerfile and "--require-hashes" in dockerfile
    assert "--no-deps /src" in dockerfile  # the project itself adds nothing unpinned
    assert "USER 10001" in dockerfile


def test_the_package_installs_serving_dependencies_only() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not {_name(r) for r in pyproject["dependencies"]} & {"matplotlib", "torch", "rich"}


def test_the_build_context_leaves_caches_and_the_demos_bad_student_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "models/.cache" in ignored and "models/student_bad.onnx" in ignored
    assert ignored[ignored.index("*") + 1 :]  # everything else is opted in, not out
