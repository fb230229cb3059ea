"""`distill-stack` (`make stack`): the whole system as local processes on one machine.

A gateway on the shipped pair, a real Prometheus with the shipped rules scraping it and the
controller, a traffic generator, and a rollout driven through Prometheus. It stays up afterwards
so any Grafana can point at the Prometheus and import grafana/dashboards/distill-gateway.json.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import httpx
import typer

from controller.local.processes import BIN, GatewayProcess, PrometheusProcess
from controller.local.traffic import TrafficGenerator
from controller.promtext import parse, select
from gateway.roles import Protocol

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARD = ROOT / "grafana" / "dashboards" / "distill-gateway.json"
POLICY = Path(__file__).parents[1] / "policies" / "demo.yaml"


def stack(
    gateway_port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
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
    """Run gateway, Prometheus, traffic and one rollout locally; Ctrl-C stops it all."""
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="distill-stack-") as tmp:
        work = Path(tmp)
        gateway = GatewayProcess(
            work, {"shadow": {"sample_rate": 0.25}}, admin_token=token, port=gateway_port,
            grpc=protocol == "grpc",
        ).start()  # fmt: skip
        generator = TrafficGenerator(gateway.url, grpc_address=gateway.grpc_address)
        stop = threading.Event()
        traffic = threading.Thread(target=lambda: generator.run(stop=stop, workers=2), daemon=True)
        prometheus: PrometheusProcess | None = None
        try:
            traffic.start()
            controller = subprocess.Popen(
                [str(BIN / "distill-canary"), "run", "--gateway", gateway.url,
                 "--policy", str(policy), "--state", str(work / "rollout.db"),
                 "--prometheus", f"http://127.0.0.1:{prometheus_port}",
                 "--metrics-port", str(controller_port)],
                env={**os.environ, "DISTILL_GATEWAY_ADMIN_TOKEN": token},
            )  # fmt: skip
            prometheus = PrometheusProcess(
                work,
                {"distill-gateway": [gateway.address],
                 "distill-canary": [f"127.0.0.1:{controller_port}"]},
                scrape_interval="1s", rule_files=RULES, port=prometheus_port,
            ).start()  # fmt: skip
            print(f"gateway     {gateway.url}  (tritonclient: 127.0.0.1:{gateway_port})")
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
            served = parse(httpx.get(f"{gateway.url}/metrics", timeout=5).text)
            by_protocol = {protocol: select(served, "gateway_requests_total", protocol=protocol)
                           for protocol in ("http", "grpc")}  # fmt: skip
            print("the gateway answered " + ", ".join(
                f"{count:.0f} requests over {protocol}" for protocol, count in by_protocol.items()
            ), flush=True)  # fmt: skip
            if exit_after_rollout:
                raise typer.Exit(code)
            print("still serving; Ctrl-C stops everything", flush=True)
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            traffic.join(timeout=30)
            if prometheus is not None:
                prometheus.stop()
            gateway.stop()


def _queries_answered(prometheus: PrometheusProcess) -> int:
    """From Prometheus's own metrics: how many instant queries it answered."""
    text = httpx.get(f"{prometheus.url}/metrics", timeout=5).text
    snapshot = parse(text, keep=("prometheus_http_requests_total",))
    return int(select(snapshot, "prometheus_http_requests_total", handler="/api/v1/query"))


def main() -> None:
    typer.run(stack)


if __name__ == "__main__":
    main()
