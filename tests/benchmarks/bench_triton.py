"""Benchmark: the Triton paths. Batch-1 inference on the student served by a real Triton server,
called directly with tritonclient (gRPC or HTTP) against the same calls through the gateway (whose
student backend is that Triton model over the same protocol), at concurrency 1 and 16.

Run with ``make bench``; results go to ``tests/benchmarks/results/bench_triton.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from models import TEST_SPLIT_PATH
from models.data import load_test_split
from tests.benchmarks.bench_gateway import (
    bench_gateway,
    binary_bodies,
    compared,
    report,
    run_threads,
    summarize,
)
from tests.servers import TestGateway, TritonProcess

RESULTS = Path(__file__).parent / "results" / "bench_triton.json"


def bench_direct(
    protocol: str, url: str, x: np.ndarray, requests: int, concurrency: int
) -> dict[str, float]:
    module: Any = triton_grpc if protocol == "grpc" else triton_http
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(offset: int, count: int, record: bool) -> None:
        client = module.InferenceServerClient(url)
        mine = []
        for n in range(count):
            row = x[(offset + n) % len(x)][None]
            pixels = module.InferInput("pixels", [1, 64], "FP32")
            pixels.set_data_from_numpy(row)
            start = time.perf_counter()
            client.infer("student", [pixels])
            mine.append(time.perf_counter() - start)
        client.close()
        if record:
            with lock:
                latencies.extend(mine)

    worker(0, 100, record=False)
    per_thread = requests // concurrency
    wall = run_threads(
        [
            threading.Thread(target=worker, args=(t * 97, per_thread, True))
            for t in range(concurrency)
        ]
    )
    return summarize(latencies, wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    x = load_test_split(TEST_SPLIT_PATH).x
    bodies = binary_bodies(x)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        triton = TritonProcess(Path(tmp)).start()
        try:
            for protocol in ("grpc", "http"):
                url = triton.grpc_url if protocol == "grpc" else triton.http_url
                gateway = TestGateway(Path(tmp), {
                    "shadow": {"sample_rate": 0.0},
                    "student": {"kind": "triton", "url": url, "model_name": "student",
                                "protocol": protocol},
                }).start()  # fmt: skip
                try:
                    for concurrency in (1, 16):
                        direct = bench_direct(protocol, url, x, args.requests, concurrency)
                        through = bench_gateway(
                            gateway.address, "student", bodies, args.requests, concurrency
                        )
                        rows.append(compared("protocol", protocol, concurrency, direct, through))
                finally:
                    gateway.stop()
        finally:
            triton.stop()

    title = f"student on Triton, batch 1, {args.requests} requests each (ms)"
    report(rows, "protocol", title, args.out)


if __name__ == "__main__":
    main()
