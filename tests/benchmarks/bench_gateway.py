"""Benchmark: batch-1 inference through the gateway against ONNX Runtime called directly.

For the teacher and the student, at concurrency 1 and 16: p50, p99, requests per second, and the
gateway's added latency (gateway p50 - direct p50). The client sends pre-encoded binary V2
bodies over keep-alive connections (http.client), so its own cost stays small. Run with
``make bench``; results go to ``tests/benchmarks/results/bench_gateway.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from rich.console import Console
from rich.table import Table

from controller.local.processes import GatewayProcess
from models import STUDENT_PATH, TEACHER_PATH, TEST_SPLIT_PATH
from models.data import load_test_split

RESULTS = Path(__file__).parent / "results" / "bench_gateway.json"


def summarize(latencies: list[float], wall: float) -> dict[str, float]:
    ms = np.array(latencies) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rps": len(latencies) / wall,
    }


def run_threads(threads: list[threading.Thread]) -> float:
    """Starts the threads together and returns the wall time until the last one ends."""
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def bench_direct(path: Path, x: np.ndarray, requests: int, concurrency: int) -> dict[str, float]:
    """The baseline: session.run from ``concurrency`` threads, same session options as served."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = [x[i : i + 1] for i in range(len(x))]
    for row in rows[:50]:
        session.run(["logits"], {"pixels": row})
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = requests // concurrency

    def worker(offset: int) -> None:
        mine = []
        for n in range(per_thread):
            start = time.perf_counter()
            session.run(["logits"], {"pixels": rows[(offset + n) % len(rows)]})
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    wall = run_threads(
        [threading.Thread(target=worker, args=(t * 97,)) for t in range(concurrency)]
    )
    return summarize(latencies, wall)


def binary_bodies(x: np.ndarray) -> list[tuple[bytes, str]]:
    bodies = []
    for i in range(len(x)):
        header = orjson.dumps(
            {
                "inputs": [
                    {"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                     "parameters": {"binary_data_size": 256}}
                ],
                "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
            }
        )  # fmt: skip
        bodies.append((header + x[i : i + 1].tobytes(), str(len(header))))
    return bodies


def bench_gateway(
    address: str, backend: str, bodies: list[tuple[bytes, str]], requests: int, concurrency: int
) -> dict[str, float]:
    """``concurrency`` threads, each with one keep-alive connection (http.client: the leanest
    Python client, so the numbers are mostly the gateway's)."""
    host, port = address.split(":")
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = requests // concurrency

    def worker(offset: int, count: int, record: bool) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        mine = []
        for n in range(count):
            body, header_length = bodies[(offset + n) % len(bodies)]
            headers = {"Inference-Header-Content-Length": header_length, "x-canary": backend}
            start = time.perf_counter()
            connection.request("POST", "/v2/models/digits/infer", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            assert response.status == 200
        connection.close()
        if record:
            with lock:
                latencies.extend(mine)

    worker(0, 100, record=False)  # warm-up
    wall = run_threads(
        [
            threading.Thread(target=worker, args=(t * 97, per_thread, True))
            for t in range(concurrency)
        ]
    )
    return summarize(latencies, wall)


def compared(
    key: str, name: str, concurrency: int, direct: dict[str, float], through: dict[str, float]
) -> dict[str, Any]:
    """One row: the direct baseline, the same calls through the gateway, and their ratios."""
    return {
        key: name,
        "concurrency": concurrency,
        "direct": direct,
        "gateway": through,
        "added_p50_ms": through["p50_ms"] - direct["p50_ms"],
        "rps_ratio": through["rps"] / direct["rps"],
    }


def report(rows: list[dict[str, Any]], first: str, title: str, out: Path) -> None:
    """Prints the comparison table and writes the rows, with when and where, to ``out``."""
    table = Table(title=title)
    for column in (first, "conc", "direct p50", "direct p99", "direct rps", "gateway p50",
                   "gateway p99", "gateway rps", "added p50", "rps ratio"):  # fmt: skip
        table.add_column(column, justify="right")
    for row in rows:
        d, g = row["direct"], row["gateway"]
        table.add_row(
            row[first], str(row["concurrency"]), f"{d['p50_ms']:.3f}", f"{d['p99_ms']:.3f}",
            f"{d['rps']:.0f}", f"{g['p50_ms']:.3f}", f"{g['p99_ms']:.3f}", f"{g['rps']:.0f}",
            f"{row['added_p50_ms']:.3f}", f"{row['rps_ratio']:.3f}",
        )  # fmt: skip
    Console(width=160).print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": platform.machine(), "python": platform.python_version()},
        "note": "same run, same machine: compare ratios, not absolute numbers",
        "median_added_p50_ms": statistics.median(r["added_p50_ms"] for r in rows),
        "rows": rows,
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    x = load_test_split(TEST_SPLIT_PATH).x
    bodies = binary_bodies(x)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = {"shadow": {"sample_rate": 0.0}}  # the default overload: what users deploy
        gateway = GatewayProcess(Path(tmp), config).start()
        try:
            for backend, path in (("teacher", TEACHER_PATH), ("student", STUDENT_PATH)):
                for concurrency in (1, 16):
                    direct = bench_direct(path, x, args.requests, concurrency)
                    through = bench_gateway(
                        gateway.address, backend, bodies, args.requests, concurrency
                    )
                    rows.append(compared("backend", backend, concurrency, direct, through))
        finally:
            gateway.stop()

    report(rows, "backend", f"batch 1, {args.requests} requests each (ms)", args.out)


if __name__ == "__main__":
    main()
