"""deploy/ and grafana/ as a platform team would use them: valid, consistent, and tested."""

from __future__ import annotations

import json
import re
import runpy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controller import error_rate
from gateway import metric_names as names
from gateway.config import GatewaySettings
from tests.manifests import KUBERNETES, ROOT, by_kind, manifests, named, pod_templates

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "grafana" / "dashboards" / "distill-gateway.json"
KUBERNETES_VERSION = "1.30.0"
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator CRDs


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make test` (Debian's prometheus package)"
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=PROMETHEUS)


@pytest.mark.parametrize(
    "document",
    [d for d in manifests() if d["kind"] not in CUSTOM_KINDS],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_kubernetes_manifests_are_valid(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_gateway_deployment_is_production_shaped() -> None:
    deployment = named("Deployment", "distill-gateway")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    assert "lifecycle" not in container  # the gateway drains on SIGTERM; a preStop would add
    settings = _gateway_settings()
    stopping = settings.shutdown.drain_seconds + settings.shutdown.grace_seconds
    assert pod["terminationGracePeriodSeconds"] > stopping and settings.shutdown.drain_seconds > 0
    token = next(e for e in container["env"] if e["name"] == "DISTILL_GATEWAY_ADMIN_TOKEN")
    assert "secretKeyRef" in token["valueFrom"]
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "distill-gateway"
    assert hpa["spec"]["minReplicas"] >= 2
    # The HPA owns the count: a replicas field would reset it on every `kubectl apply`.
    assert "replicas" not in deployment["spec"]


def _gateway_settings() -> GatewaySettings:
    config_map = named("ConfigMap", "distill-gateway-config")
    return GatewaySettings(**yaml.safe_load(config_map["data"]["gateway.yaml"]))


def test_the_gateway_config_map_is_a_valid_gateway_config() -> None:
    from gateway.config import OnnxBackendConfig, TritonBackendConfig

    settings = _gateway_settings()
    assert isinstance(settings.teacher, OnnxBackendConfig)
    assert settings.teacher.path.name == "teacher.onnx"
    assert isinstance(settings.student, TritonBackendConfig)
    triton = named("Service", "distill-triton")
    grpc_port = next(p["port"] for p in triton["spec"]["ports"] if p["name"] == "grpc")
    assert settings.student.url == f"distill-triton:{grpc_port}"


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def test_the_store_is_closed_to_all_but_the_gateways_and_the_controller() -> None:
    """Whoever writes the fleet's keys sets the share and the student, as the admin API would:
    Redis speaks TLS only, its default user is off, and the gateways and the controller each log
    in as an ACL user of their own, with a password from the Secret, whose rights stop at the
    fleet's key prefix."""
    redis = named("Deployment", "distill-redis")["spec"]["template"]["spec"]["containers"][0]
    (script,) = redis["args"]
    assert "--port 0 --tls-port 6379" in script and "--requirepass" not in script
    assert "user default off" in script and "--aclfile /tmp/users.acl" in script
    rights = named("ConfigMap", "distill-redis-acl")["data"]["rights"]
    prefix = _gateway_settings().state.key_prefix
    assert f"resetkeys ~{prefix}:* resetchannels &{prefix}:*" in rights and "-@dangerous" in rights
    users = {}
    for app in ("distill-gateway", "distill-canary"):
        (container,) = [c for name, pod in pod_templates().items() if name.startswith(app)
                        for c in pod["containers"]]  # fmt: skip
        env = _env(container)
        users[app] = env["DISTILL_GATEWAY_STATE__USERNAME"]["value"]
        secret = env["DISTILL_GATEWAY_STATE__PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret["name"] == "distill-redis", app
        assert f"user {users[app]} on >%s" in script, app
        assert _env(redis)[secret["key"].upper().replace("-", "_")]["valueFrom"][
            "secretKeyRef"] == secret, app  # fmt: skip
    assert users == {"distill-gateway": "distill-gateway", "distill-canary": "distill-canary"}
    assert _gateway_settings().state.url.startswith("rediss://")


def test_the_controller_policy_config_map_is_a_valid_policy() -> None:
    from controller.policy import Policy

    config_map = named("ConfigMap", "distill-canary-policy")
    policy = Policy.model_validate(yaml.safe_load(config_map["data"]["policy.yaml"]))
    assert policy.steps[0] == 0  # production starts with a dark launch


def test_triton_model_configs_match_the_onnx_signature() -> None:
    config_map = named("ConfigMap", "distill-triton-model-configs")
    for role in ("student",):  # the teacher runs in the gateways
        text = config_map["data"][f"{role}.pbtxt"]
        assert f'name: "{role}"' in text and 'platform: "onnxruntime_onnx"' in text
        assert 'name: "pixels", data_type: TYPE_FP32, dims: [ 64 ]' in text
        assert 'name: "logits", data_type: TYPE_FP32, dims: [ 10 ]' in text


def test_each_service_monitor_selects_exactly_one_service_and_its_port() -> None:
    services = by_kind("Service")
    for monitor in by_kind("ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        matching = [s for s in services if wanted <= s["metadata"].get("labels", {}).items()]
        assert len(matching) == 1, f"{monitor['metadata']['name']} would scrape pods twice"
        ports = {port["name"] for port in matching[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def test_the_prometheus_rule_holds_exactly_the_rule_files() -> None:
    rendered = runpy.run_path(str(KUBERNETES / "render_monitoring.py"))["render"]()
    assert (KUBERNETES / "monitoring.yaml").read_text() == rendered, "run render_monitoring.py"
    (rule,) = by_kind("PrometheusRule")
    groups = []
    for path in sorted((PROMETHEUS / "rules").glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    assert rule["spec"]["groups"] == groups


def test_promtool_checks_the_config_and_the_rules() -> None:
    config = _promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rule_files = sorted(str(p) for p in (PROMETHEUS / "rules").glob("*.yml"))
    rules = _promtool("check", "rules", *rule_files)
    assert rules.returncode == 0, rules.stdout + rules.stderr


def _one_line(promql: str) -> str:
    return re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", " ".join(promql.split())))


def test_the_error_rate_has_one_definition_everywhere() -> None:
    """The controller's gate counts with controller.error_rate; the recording rule (which the
    alert reads) and the dashboard's panel hold the PromQL it writes, so a student whose every
    call falls back is 100 % errors on all of them (promtool's tests/alerts_test.yml shows it)."""
    groups = yaml.safe_load((PROMETHEUS / "rules" / "recording.yml").read_text())["groups"]
    recorded = "model_backend:gateway_error_ratio:rate5m"
    (rule,) = [r for g in groups for r in g["rules"] if r.get("record") == recorded]
    assert _one_line(rule["expr"]) == error_rate.error_ratio("5m")
    alerts = (PROMETHEUS / "rules" / "alerts.yml").read_text()
    assert 'expr: model_backend:gateway_error_ratio:rate5m{backend="student"}' in alerts
    dashboard = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Error rate by backend"]
    assert panel["targets"][0]["expr"] == error_rate.error_ratio(
        "$__rate_interval", 'model="$model"', "backend")  # fmt: skip


@pytest.mark.e2e  # runs promtool, a real process, over every rule file
def test_promtool_unit_tests_cover_every_alert() -> None:
    result = _promtool("test", "rules", "tests/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    alert_groups = yaml.safe_load((PROMETHEUS / "rules" / "alerts.yml").read_text())["groups"]
    alerts = {rule["alert"] for group in alert_groups for rule in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS / "tests" / "alerts_test.yml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert firing == alerts  # every alert has a case where it fires


def test_the_dashboard_is_the_generators_output() -> None:
    rendered = runpy.run_path(str(ROOT / "grafana" / "build_dashboard.py"))["render"]()
    assert DASHBOARD.read_text() == rendered, "run python grafana/build_dashboard.py"


def test_the_dashboard_is_importable_anywhere() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["model"]["query"]["query"] == "label_values(gateway_requests_total, model)"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            expr = target["expr"]
            assert "gateway_" not in expr or '$model"' in expr, f"{panel['title']}: {expr}"
    provider = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "distill-gateway.yaml").read_text()
    )
    assert provider["providers"][0]["type"] == "file"


def test_every_dashboard_row_repeats_per_chosen_model() -> None:
    """A gateway serves several models: pick any of them (or All) and every row shows up once per
    model, each of its panels reading that model alone, so one model's trouble never hides
    behind another's traffic."""
    dashboard = json.loads(DASHBOARD.read_text())
    model = {v["name"]: v for v in dashboard["templating"]["list"]}["model"]
    assert model["multi"] and model["includeAll"]
    assert model["current"]["value"] == ["$__all"]
    panels = dashboard["panels"]
    assert panels[0]["type"] == "row", "a panel before the first row would not repeat"
    rows = [p for p in panels if p["type"] == "row"]
    assert len(rows) >= 5
    for row in rows:
        assert row["repeat"] == "model" and not row["collapsed"], row["title"]
        assert row["title"].startswith("$model: "), row["title"]
    for panel in panels:
        for target in panel["targets"]:
            assert 'model="$model"' in target["expr"], f"{panel['title']}: {target['expr']}"
    # The annotations belong to no row: they mark every chosen model's rollouts, each by name.
    for annotation in dashboard["annotations"]["list"]:
        assert 'model=~"$model"' in annotation["expr"]
        assert "sum by (model" in annotation["expr"]
        assert annotation["titleFormat"].startswith("{{model}} ")


def _metric_names() -> set[str]:
    return {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}


@pytest.mark.parametrize(
    "path",
    [
        DASHBOARD,
        *sorted((PROMETHEUS / "rules").glob("*.yml")),
        PROMETHEUS / "tests" / "alerts_test.yml",
    ],
    ids=lambda p: p.name,
)
def test_the_rules_and_dashboard_read_only_the_gateways_named_metrics(path: Path) -> None:
    """Every gateway_* series they read is one gateway/metric_names.py names (a histogram's
    _bucket, _sum or _count of one): a renamed metric cannot leave a panel or an alert reading
    nothing. Recorded series (level:metric:operations) are the rules' own."""
    text = path.read_text()
    read = set(re.findall(r"(?<![\w:])gateway_[a-z_]+", text))
    assert read, path
    known = _metric_names()
    unknown = {n for n in read if re.sub(r"_(bucket|sum|count)$", "", n) not in known
               and n not in known}  # fmt: skip
    assert not unknown, f"{path.name} reads metrics gateway/metric_names.py does not name"


def test_every_alert_names_its_model() -> None:
    """Each alert keeps the model label (summed by model, never across models) and says which
    model in its summary, so Alertmanager can route it to the model's owners."""
    groups = yaml.safe_load((PROMETHEUS / "rules" / "alerts.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert alerts
    for alert in alerts:
        assert "$labels.model" in alert["annotations"]["summary"], alert["alert"]
