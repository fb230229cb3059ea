"""Benchmark: one model's hung teacher does not spill into another model on the same gateway.

One gateway process (pinned to CPU 0, the config users deploy but for the second model's teacher)
serves two models: ``digits`` (the shipped pair in process) and ``hung``, whose teacher is a real
Triton model that answers its first call (the gateway's warm-up) and then never again. ``wrk``
(CPU 1) loads ``digits`` at concurrency 16 alone; then beside a second ``wrk`` keeping 32
connections on ``hung``, each pausing a second after every answer (its 503s carry
``Retry-After: 1``, which well-behaved clients honour; they do not spin); then beside the same
paced load on ``healthy``, a third model (the shipped pair again) whose teacher is fine, which
separates what serving another model's requests costs from what the hang costs. Each round
measures all three, next to each other; the ratios are medians over rounds of each round's ratio,
counting served (2xx) answers only.

What isolation means here: ``hung``'s requests time out (its teacher's ``timeout_ms``), open its
circuit breaker and are answered 503 from then on, in its own admission queue and thread pool;
``digits``' throughput and p99 stay within noise of its unloaded numbers.

Run with ``make bench``; results go to ``tests/benchmarks/results/bench_isolation.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from models import STUDENT_PATH
from tests.benchmarks.bench_protocols import PINNED, PinnedGateway
from tests.benchmarks.bench_serving import (
    ONE_ROW,
    json_body,
    non_2xx_share,
    wrk,
    wrk_command,
    wrk_script,
    wrk_summary,
)
from tests.servers import TritonProcess

RESULTS = Path(__file__).parent / "results" / "bench_isolation.json"
HUNG_CONNECTIONS = 32
HUNG_DELAY_MS = 1000  # between a connection's answer and its next request (Retry-After: 1)


def gateway_config(triton_grpc_url: str) -> dict[str, Any]:
    hung = {"name": "hung", "student": {"path": str(STUDENT_PATH)},
            "teacher": {"kind": "triton", "url": triton_grpc_url, "model_name": "student_hung",
                        "timeout_ms": 1000}}  # fmt: skip
    return {"models": [{"name": "digits"}, hung, {"name": "healthy"}]}


def start_paced_load(port: int, model: str, seconds: float, script: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        wrk_command(port, f"/v2/models/{model}/infer", HUNG_CONNECTIONS, seconds, script),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def summary_of(load: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = load.communicate(timeout=120)
    summary = wrk_summary(out)
    return {"requests_per_s": summary["requests"] / summary["seconds"],
            "non_2xx_share": non_2xx_share(summary)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds; medians")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        one = wrk_script(tmp, json_body(ONE_ROW), {"Content-Type": "application/json"})
        # wrk's POST of one digits row to the other model, each connection pausing between requests
        paced = wrk_script(tmp, json_body(ONE_ROW), {"Content-Type": "application/json"},
                           extra=f"function delay() return {HUNG_DELAY_MS} end")  # fmt: skip
        triton = TritonProcess(tmp).start()
        gateway = None
        try:
            gateway = PinnedGateway(tmp, gateway_config(triton.grpc_url)).start()
            path = "/v2/models/digits/infer"
            wrk(gateway.port, path, 16, 1, one)  # warm-up, not reported
            for _ in range(args.rounds):
                measured: dict[str, Any] = {"alone": wrk(gateway.port, path, 16, args.seconds,
                                                         one)}  # fmt: skip
                for other in ("hung", "healthy"):
                    load = start_paced_load(gateway.port, other, args.seconds + 2, paced)
                    time.sleep(1.0)  # the other model's connections open (and calls pile up)
                    measured[f"beside_{other}"] = wrk(gateway.port, path, 16, args.seconds, one)
                    measured[other] = summary_of(load)
                rounds.append(measured)
        finally:
            if gateway is not None:
                gateway.stop()
            triton.stop()
    ratios = {
        "digits c16 rps beside hung / alone": statistics.median(
            r["beside_hung"]["rps"] / r["alone"]["rps"] for r in rounds),
        "digits c16 p99 beside hung / alone": statistics.median(
            r["beside_hung"]["p99_ms"] / r["alone"]["p99_ms"] for r in rounds),
        "digits c16 p99 beside hung / beside healthy": statistics.median(
            r["beside_hung"]["p99_ms"] / r["beside_healthy"]["p99_ms"] for r in rounds),
        "digits c16 rps beside hung / beside healthy": statistics.median(
            r["beside_hung"]["rps"] / r["beside_healthy"]["rps"] for r in rounds),
        "digits c16 p99 alone, round to round (max / min)": max(
            r["alone"]["p99_ms"] for r in rounds) / min(r["alone"]["p99_ms"] for r in rounds),
    }  # fmt: skip
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    for index, r in enumerate(rounds):
        line = (
            f"round {index}: alone {r['alone']['rps']:.0f} req/s p99 {r['alone']['p99_ms']:.2f} ms"
        )
        for other in ("hung", "healthy"):
            beside, load = r[f"beside_{other}"], r[other]
            line += (
                f" | beside {other} {beside['rps']:.0f} req/s p99 {beside['p99_ms']:.2f} ms,"
                f" non-2xx {beside['non_2xx_share']:.1%} ({other}: "
                f"{load['requests_per_s']:.0f} req/s, non-2xx {load['non_2xx_share']:.0%})"
            )
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": platform.machine(), "python": platform.python_version()},
        "note": "same run: compare the ratios, not absolute numbers", "pinned": PINNED,
        "seconds": args.seconds, "hung_connections": HUNG_CONNECTIONS,
        "hung_delay_ms": HUNG_DELAY_MS, "ratios": ratios, "rounds": rounds,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
