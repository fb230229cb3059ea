"""Benchmark: what overload and big bodies cost the requests a gateway admits.

A probe (one client, one small request every 5 ms on a keep-alive connection) measures the
latency of the requests it gets answered, while ``wrk`` (a C load generator, so the client never
saturates first) loads the gateway. The gateway is pinned to CPU 0, the probe and wrk to CPU 1.

- idle: the probe alone.
- at capacity: wrk with ``max_inflight - 1`` connections back to back (the probe is the last
  slot); what it serves per second is the capacity C.
- 3x overload: 3 x ``max_inflight`` connections, each pacing its requests (wrk's ``delay``) so
  that together they offer 3 x C per second, as clients that arrive on their own schedule do; the
  excess is shed with 503.
- 3x, no shedding: the same offered load on a gateway whose limit is out of reach.
- 3x back to back: 3 x ``max_inflight`` connections that resend the moment they are answered,
  a 503 included (clients ignoring Retry-After): the worst case for shedding.
- big bodies: the probe beside a client sending 1024-row gzip JSON bodies back to back (each
  about 1.3 MB to decompress and decode).

Ratios are against the idle probe and the at-capacity probe of the same run. Run with
``make bench``; results go to ``tests/benchmarks/results/bench_reliability.json``.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from controller.local.processes import GatewayProcess
from tests.benchmarks.bench_protocols import PINNED, PinnedGateway
from tests.servers import read_metric

RESULTS = Path(__file__).parent / "results" / "bench_reliability.json"
SMALL = orjson.dumps(
    {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
)


def _big_body() -> bytes:
    x = np.random.default_rng(0).random((1024, 64), dtype=np.float32)
    return gzip.compress(
        orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": [1024, 64],
                        "datatype": "FP32",
                        "data": x.reshape(-1).tolist(),
                    }
                ]
            }
        )
    )


class Probe(threading.Thread):
    """Small requests at a steady pace; records the latency of each 200 and counts the rest."""

    def __init__(self, port: int, seconds: float, interval: float = 0.005) -> None:
        super().__init__()
        self._port, self._seconds, self._interval = port, seconds, interval
        self.latencies: list[float] = []
        self.refused = 0

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=30)
        headers = {"content-type": "application/json"}
        end = time.perf_counter() + self._seconds
        next_at = time.perf_counter()
        while (now := time.perf_counter()) < end:
            if now < next_at:
                time.sleep(next_at - now)
            next_at += self._interval
            start = time.perf_counter()
            connection.request("POST", "/v2/models/digits/infer", SMALL, headers)
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                self.latencies.append(time.perf_counter() - start)
            else:
                self.refused += 1
        connection.close()

    def summary(self) -> dict[str, float]:
        ms = np.array(self.latencies) * 1000.0
        return {
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()),
            "answered": len(ms),
            "refused": self.refused,
        }


def _wrk(port: int, connections: int, seconds: float, script: Path) -> subprocess.Popen[str]:
    pin = ["taskset", "-c", "1"] if PINNED else []
    return subprocess.Popen(
        [
            *pin,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{round(seconds)}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/v2/models/digits/infer",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _pin_self() -> None:
    if PINNED:
        os.sched_setaffinity(0, {1})


def _codes(gateway: GatewayProcess) -> dict[str, float]:
    text = gateway.metrics_text()
    return {
        code: read_metric(text, "gateway_requests_total", code=code, protocol="http")
        for code in ("200", "503")
    } | {"200_student": read_metric(text, "gateway_requests_total", code="200", backend="student")}


def measure(
    gateway: GatewayProcess, connections: int, seconds: float, script: Path, big: bool = False
) -> dict[str, Any]:
    before = _codes(gateway)
    wrk = _wrk(gateway.port, connections, seconds + 1, script) if connections else None
    stop = threading.Event()
    sender = threading.Thread(target=_send_big, args=(gateway.port, stop)) if big else None
    if sender:
        sender.start()
    time.sleep(0.5 if (wrk or sender) else 0)  # the load is flowing before the probe starts
    probe = Probe(gateway.port, seconds)
    probe.start()
    probe.join()
    stop.set()
    if sender:
        sender.join()
    if wrk:
        wrk.communicate()
    after = _codes(gateway)
    served, shed = after["200"] - before["200"], after["503"] - before["503"]
    return {
        **probe.summary(),
        "served": served,
        "shed": shed,
        "shed_fraction": shed / max(1.0, served + shed),
    }


def _paced(tmp: Path, connections: int, per_second: float) -> Path:
    """A wrk script whose ``connections`` together offer about ``per_second`` requests."""
    script = tmp / "paced.lua"
    pause_ms = max(1, round(1000.0 * connections / per_second))
    # Uniform in [0, 2 x pause]: the connections drift apart instead of arriving in lockstep
    # bursts, as independent clients do.
    script.write_text(
        f"{_post_script()}function delay()\n  return math.random(0, {2 * pause_ms})\nend\n"
    )
    return script


def _post_script() -> str:
    return (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [[{SMALL.decode()}]]\n"
    )


def _send_big(port: int, stop: threading.Event) -> None:
    body = _big_body()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    while not stop.is_set():
        connection.request("POST", "/v2/models/digits/infer", body, headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--max-inflight", type=int, help="default: the gateway's own default")
    args = parser.parse_args()
    _pin_self()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_post_script())
        base: dict[str, Any] = {"shadow": {"sample_rate": 0.0}, "traffic": {"student_share": 0.5}}
        limits = {"overload": {"max_inflight": args.max_inflight}} if args.max_inflight else {}
        limited = PinnedGateway(Path(tmp) / "limited", {**base, **limits}).start()
        try:
            limit = int(read_metric(limited.metrics_text(), "gateway_max_inflight_requests"))
            measure(limited, limit, 2, script)  # warm-up
            rows["idle"] = measure(limited, 0, args.seconds, script)
            rows["at capacity"] = measure(limited, limit - 1, args.seconds, script)
            capacity = rows["at capacity"]["served"] / args.seconds
            paced = _paced(Path(tmp), 3 * limit, 3 * capacity)
            rows["3x overload"] = measure(limited, 3 * limit, args.seconds, paced)
            rows["3x back to back"] = measure(limited, 3 * limit, args.seconds, script)
            rows["big bodies"] = measure(limited, 0, args.seconds, script, big=True)
        finally:
            limited.stop()
        unlimited = PinnedGateway(
            Path(tmp) / "unlimited", {**base, "overload": {"max_inflight": 100_000}}
        ).start()
        try:
            measure(unlimited, limit, 2, script)
            rows["3x, no shedding"] = measure(unlimited, 3 * limit, args.seconds, paced)
        finally:
            unlimited.stop()
    reference = rows["at capacity"]["p99_ms"]
    for row in rows.values():
        row["p99_vs_capacity"] = row["p99_ms"] / reference
        row["p99_vs_idle"] = row["p99_ms"] / rows["idle"]["p99_ms"]
    table = Table(title=f"Admitted requests' latency (probe), max_inflight {limit}")
    for column in (
        "load",
        "probe p50 ms",
        "p99 ms",
        "max ms",
        "p99 / at capacity",
        "p99 / idle",
        "served",
        "shed",
    ):
        table.add_column(column, justify="right")
    for name, row in rows.items():
        table.add_row(
            name,
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['max_ms']:.1f}",
            f"{row['p99_vs_capacity']:.2f}",
            f"{row['p99_vs_idle']:.2f}",
            f"{row['served']:.0f}",
            f"{row['shed']:.0f} ({row['shed_fraction']:.0%})",
        )
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": platform.platform(), "pinned": PINNED, "max_inflight": limit, "rows": rows},
            indent=2,
        )
    )
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
