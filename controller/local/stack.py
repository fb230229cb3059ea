"""`distill-stack` (`make stack`): the whole system as local processes on one machine.

A fleet of gateway replicas on the shipped pair sharing a real Redis (the share, the replica
registry, the predictions awaiting labels), a real Prometheus with the shipped rules scraping them
and the controller, a traffic generator per replica whose labels go to another replica than the
one that answered, and a rollout that finds the replicas in Redis and reads Prometheus. It stays
up afterwards so any Grafana can point at the Prometheus and import
grafana/dashboards/distill-gateway.json.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import typer

from controller.local.processes import (
    BIN,
    GatewayProcess,
    PrometheusProcess,
    RedisProcess,
    free_port,
)
from controller.local.traffic import TrafficGenerator
from controller.promtext import combine, parse, select
from gateway.roles import Protocol

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARD = ROOT / "grafana" / "dashboards" / "distill-gateway.json"
POLICY = Path(__file__).parents[1] / "policies" / "demo.yaml"


def stack(
    gateway_port: Annotated[int, typer.Option(help="The first gateway replica's port.")] = 8000,
    replicas: Annotated[
        int, typer.Option(min=1, help="Gateway replicas (the others take free ports).")
    ] = 2,
    prometheus_port: Annotated[int, typer.Option(help="Prometheus port.")] = 9090,
    controller_port: Annotated[int, typer.Option(help="Controller metrics port.")] = 9102,
    policy: Annotated[Path, typer.Option(help="Rollout policy.")] = POLICY,
    exit_after_rollout: Annotated[
        bool, typer.Option(help="Stop everything when the rollout ends (for tests and CI).")
    ] = False,
    protocol: Annotated[
        Protocol, typer.Option(help="How the traffic reaches the gateway: http or grpc.")
    ] = "http",
) -> None:
    """Run Redis, gateway replicas, Prometheus, traffic and one rollout locally; Ctrl-C stops it
    all."""
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="distill-stack-") as tmp:
        work = Path(tmp)
        redis = RedisProcess(work / "redis").start()
        config = {"shadow": {"sample_rate": 0.25}, "state": {"url": redis.url}}
        gateways = [
            GatewayProcess(work, config, admin_token=token,
                           port=gateway_port if n == 0 else free_port(),
                           grpc=protocol == "grpc").start()
            for n in range(replicas)
        ]  # fmt: skip
        stop = threading.Event()
        traffic = [
            threading.Thread(target=_traffic(gateway, gateways[(n + 1) % replicas], stop),
                             daemon=True)
            for n, gateway in enumerate(gateways)
        ]  # fmt: skip
        prometheus: PrometheusProcess | None = None
        try:
            for thread in traffic:
                thread.start()
            controller = subprocess.Popen(
                [str(BIN / "distill-canary"), "run", "--state-url", redis.url,
                 "--policy", str(policy), "--state", str(work / "rollout.db"),
                 "--prometheus", f"http://127.0.0.1:{prometheus_port}",
                 "--metrics-port", str(controller_port)],
                env={**os.environ, "DISTILL_GATEWAY_ADMIN_TOKEN": token},
            )  # fmt: skip
            prometheus = PrometheusProcess(
                work,
                {"distill-gateway": [gateway.address for gateway in gateways],
                 "distill-canary": [f"127.0.0.1:{controller_port}"]},
                scrape_interval="1s", rule_files=RULES, port=prometheus_port,
            ).start()  # fmt: skip
            print(f"redis       {redis.url}  (the fleet's share, registry and predictions)")
            for gateway in gateways:
                print(f"gateway     {gateway.url}  (tritonclient: {gateway.address})")
                if gateway.grpc_address:
                    print(f"gateway     grpc://{gateway.grpc_address}  (tritonclient.grpc; the "
                          "traffic goes this way)")  # fmt: skip
            print(f"prometheus  {prometheus.url}  (rules from deploy/prometheus/rules)")
            print(f"controller  http://127.0.0.1:{controller_port}/metrics")
            print(f"grafana     add {prometheus.url} as a Prometheus data source, then import "
                  f"{DASHBOARD}", flush=True)  # fmt: skip
            code = controller.wait()
            print(f"rollout finished with exit code {code}", flush=True)
            print(f"prometheus answered {_queries_answered(prometheus)} PromQL queries "
                  "(the controller's analyses read it)", flush=True)  # fmt: skip
            served = combine(parse(httpx.get(f"{gateway.url}/metrics", timeout=5).text)
                             for gateway in gateways)  # fmt: skip
            by_protocol = {protocol: select(served, "gateway_requests_total", protocol=protocol)
                           for protocol in ("http", "grpc")}  # fmt: skip
            joined = select(served, "gateway_feedback_total")
            print(f"the {replicas} gateways answered " + ", ".join(
                f"{count:.0f} requests over {protocol}" for protocol, count in by_protocol.items()
            ), flush=True)  # fmt: skip
            print(f"{joined:.0f} labels joined, each posted to another replica than the one "
                  "that answered", flush=True)  # fmt: skip
            if exit_after_rollout:
                raise typer.Exit(code)
            print("still serving; Ctrl-C stops everything", flush=True)
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            for thread in traffic:
                thread.join(timeout=30)
            if prometheus is not None:
                prometheus.stop()
            for gateway in gateways:
                gateway.stop()
            redis.stop()


def _traffic(
    to: GatewayProcess, labels_to: GatewayProcess, stop: threading.Event
) -> Callable[[], object]:
    """Requests to one replica, their labels to another: the fleet joins them."""
    generator = TrafficGenerator(to.url, grpc_address=to.grpc_address, feedback_url=labels_to.url)
    return lambda: generator.run(stop=stop, workers=2)


def _queries_answered(prometheus: PrometheusProcess) -> int:
    """From Prometheus's own metrics: how many instant queries it answered."""
    text = httpx.get(f"{prometheus.url}/metrics", timeout=5).text
    snapshot = parse(text, keep=("prometheus_http_requests_total",))
    return int(select(snapshot, "prometheus_http_requests_total", handler="/api/v1/query"))


def main() -> None:
    typer.run(stack)


if __name__ == "__main__":
    main()
