"""Benchmark: what the fleet's state store costs one replica (issue 8).

Two gateways, each alone on CPU 0 in turn, at student share 0.5 with no shadow traffic: one with
``state.url: memory``, one with a real Redis (Debian's redis-server, on CPU 1 beside ``wrk``).
``wrk`` (C, one thread, 16 connections) sends an inference, then, the moment its answer arrives,
that request's label, then the next inference: every prediction is written to the store and
every label joins it there. The measures are inferences per second (labels answered are counted
apart) and p50/p99 of all requests, medians of ``--rounds`` interleaved rounds; the ratio is
Redis against memory in the same run. Every request is checked: a label that finds no prediction
(404) fails the run. Results go to ``tests/benchmarks/results/bench_fleet.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from controller.local.processes import RedisProcess
from tests.benchmarks.bench_protocols import PINNED, PinnedGateway, median_of

RESULTS = Path(__file__).parent / "results" / "bench_fleet.json"
SETTINGS = {"traffic": {"student_share": 0.5, "seed": 7}, "shadow": {"sample_rate": 0}}

# Each connection's next request is a label when an inference answered since, else an inference.
INFER_THEN_LABEL = """
-- Counts live in each thread's Lua state; done() (in the main state) reads them from the threads.
local infer = '{"id": "%s", "inputs": [{"name": "pixels", "shape": [1, 64], '
  .. '"datatype": "FP32", "data": [' .. string.rep('0.5, ', 63) .. '0.5]}]}'
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function()
  answered, counter, inferences, labels, failed = {}, 0, 0, 0, 0
  prefix = tostring(math.random(1, 1e9))
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local answer = table.remove(answered)
  if answer then  -- labelled as its client would: with the ticket its answer carried
    local label = '{"id": "' .. answer[1] .. '", "label": 3, "ticket": "' .. answer[2] .. '"}'
    return wrk.format(nil, "/v2/models/digits/feedback", nil, label)
  end
  counter = counter + 1
  local body = string.format(infer, prefix .. "-" .. counter)
  return wrk.format(nil, "/v2/models/digits/infer", nil, body)
end
response = function(status, headers, body)
  if status ~= 200 then failed = failed + 1 return end
  if body:find('"outputs"', 1, true) then
    inferences = inferences + 1
    table.insert(answered, {body:match('"id":"([^"]+)"'), headers["x-feedback-ticket"]})
  else
    labels = labels + 1
  end
end
done = function(summary, latency, requests)
  local inferences, labels, failed = 0, 0, 0
  for _, thread in ipairs(threads) do
    inferences = inferences + thread:get("inferences")
    labels = labels + thread:get("labels")
    failed = failed + thread:get("failed")
  end
  io.write(string.format('{"requests": %d, "seconds": %f, "p50_us": %f, "p99_us": %f, ' ..
    '"inferences": %d, "labels": %d, "failed": %d, "non_2xx": %d}\\n', summary.requests,
    summary.duration / 1e6, latency:percentile(50), latency:percentile(99), inferences, labels,
    failed, summary.errors.status))
end
"""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(gateway: PinnedGateway, script: Path, seconds: int) -> dict[str, float]:
    pin = ["taskset", "-c", "1"] if PINNED else []
    assert gateway.pid is not None
    port, cpu_before = gateway.port, cpu_seconds(gateway.pid)
    done = subprocess.run([*pin, "wrk", "-t1", "-c16", f"-d{seconds}s", "-s", str(script),
                           f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                          check=True)  # fmt: skip
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["failed"] == 0 and summary["non_2xx"] == 0, summary
    cpu = cpu_seconds(gateway.pid) - cpu_before
    return {
        "cpu_ms_per_inference": 1000.0 * cpu / summary["inferences"],
        "inferences_per_s": summary["inferences"] / summary["seconds"],
        "labels_per_s": summary["labels"] / summary["seconds"],
        "p50_ms": summary["p50_us"] / 1000.0,
        "p99_ms": summary["p99_us"] / 1000.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=3, help="per measurement (whole seconds)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds; medians")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"memory": [], "redis": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        script = tmp / "infer-then-label.lua"
        script.write_text(INFER_THEN_LABEL)
        redis = RedisProcess(tmp / "redis").start()
        if PINNED:
            subprocess.run(["taskset", "-cp", "1", str(redis.pid)], check=True,
                           capture_output=True)  # fmt: skip
        gateways: dict[str, Any] = {}
        try:
            gateways["memory"] = PinnedGateway(tmp, SETTINGS).start()
            gateways["redis"] = PinnedGateway(tmp, {**SETTINGS, "state": {"url": redis.url}}
                                              ).start()  # fmt: skip
            for gateway in gateways.values():
                run_wrk(gateway, script, 1)  # warm-up, not reported
            for _ in range(args.rounds):
                for name, gateway in gateways.items():
                    runs[name].append(run_wrk(gateway, script, args.seconds))
        finally:
            for gateway in gateways.values():
                gateway.stop()
            redis.stop()
    rows = {name: median_of(measured) for name, measured in runs.items()}
    cost = 1 - rows["redis"]["inferences_per_s"] / rows["memory"]["inferences_per_s"]
    pinning = "gateway on CPU 0; wrk and Redis on CPU 1" if PINNED else "not pinned"
    print(
        f"one replica, share 0.5, a label after every answer, wrk -c16 ({pinning}), medians "
        f"of {args.rounds} rounds of {args.seconds} s"
    )
    for name, row in rows.items():
        print(f"  state.url {name:6}  {row['inferences_per_s']:7.0f} inferences/s "
              f"(+{row['labels_per_s']:.0f} labels/s)  p50 {row['p50_ms']:.2f} ms  "
              f"p99 {row['p99_ms']:.2f} ms  gateway CPU {row['cpu_ms_per_inference']:.3f} ms "
              "per inference and its label")  # fmt: skip
    cpu_cost = rows["redis"]["cpu_ms_per_inference"] / rows["memory"]["cpu_ms_per_inference"] - 1
    print(
        f"  the Redis store's cost on throughput: {cost:.1%} (target < 10 %); on the "
        f"gateway's CPU per inference: {cpu_cost:+.1%}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": platform.machine(), "python": platform.python_version()},
        "note": "same run: compare the ratio, not absolute numbers",
        "pinned": PINNED, "seconds": args.seconds, "rounds": args.rounds, "rows": rows,
        "redis_throughput_cost (target < 0.10)": cost,
        "redis_cpu_per_inference_cost": cpu_cost,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
