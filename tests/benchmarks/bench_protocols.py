"""Benchmark: tritonclient.grpc against tritonclient.http, through the same gateway in one run.

Batch 1 and 64, each backend forced, binary tensors both ways (raw contents over gRPC, the binary
extension over HTTP), one client thread with one long-lived client. The gateway is pinned to CPU 0
and this client to CPU 1 (when there are two), so neither slows the other. Each pair is measured
``--rounds`` times, alternating which protocol goes first; the ratio is gRPC requests per second
over HTTP's, from the medians; above 1 means gRPC is the faster path. Run with ``make bench``;
results go to ``tests/benchmarks/results/bench_protocols.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from rich.console import Console
from rich.table import Table

from controller.local.processes import GatewayProcess
from models import TEST_SPLIT_PATH
from models.data import load_test_split
from tests.benchmarks.bench_gateway import summarize

RESULTS = Path(__file__).parent / "results" / "bench_protocols.json"
PINNED = len(os.sched_getaffinity(0)) >= 2


class PinnedGateway(GatewayProcess):
    """The gateway on CPU 0 (taskset), the client on the others."""

    def command(self) -> list[str]:
        return ["taskset", "-c", "0", *super().command()] if PINNED else super().command()


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def bench(client: Any, module: Any, x: np.ndarray, backend: str, requests: int) -> dict[str, float]:
    pixels = module.InferInput("pixels", list(x.shape), "FP32")
    if module is triton_http:
        pixels.set_data_from_numpy(x, binary_data=True)
        outputs = [module.InferRequestedOutput("logits", binary_data=True)]
    else:
        pixels.set_data_from_numpy(x)
        outputs = [module.InferRequestedOutput("logits")]
    headers = {"x-canary": backend}
    for _ in range(50):  # warm-up
        client.infer("digits", [pixels], outputs=outputs, headers=headers)
    latencies = []
    started = time.perf_counter()
    for _ in range(requests):
        start = time.perf_counter()
        result = client.infer("digits", [pixels], outputs=outputs, headers=headers)
        latencies.append(time.perf_counter() - start)
        assert result.as_numpy("logits").shape == (len(x), 10)
    return summarize(latencies, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds per pair")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if PINNED:
        os.sched_setaffinity(0, set(os.sched_getaffinity(0)) - {0})

    split = load_test_split(TEST_SPLIT_PATH).x
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        gateway = PinnedGateway(Path(tmp), {"shadow": {"sample_rate": 0.0}}, grpc=True).start()
        assert gateway.grpc_address is not None
        http_client = triton_http.InferenceServerClient(gateway.address)
        grpc_client = triton_grpc.InferenceServerClient(gateway.grpc_address)
        try:
            for batch in (1, 64):
                x = np.resize(split, (batch, 64)).astype(np.float32)
                for backend in ("teacher", "student"):
                    runs: dict[str, list[dict[str, float]]] = {"http": [], "grpc": []}
                    for round_ in range(args.rounds):
                        order = ["http", "grpc"] if round_ % 2 == 0 else ["grpc", "http"]
                        for protocol in order:
                            client, module = ((http_client, triton_http) if protocol == "http"
                                              else (grpc_client, triton_grpc))  # fmt: skip
                            runs[protocol].append(bench(client, module, x, backend, args.requests))
                    http, grpc = median_of(runs["http"]), median_of(runs["grpc"])
                    rows.append({"batch": batch, "backend": backend, "http": http, "grpc": grpc,
                                 "grpc_over_http_rps": grpc["rps"] / http["rps"]})  # fmt: skip
        finally:
            http_client.close()
            grpc_client.close()
            gateway.stop()

    pinning = "gateway on CPU 0, client on CPU 1" if PINNED else "not pinned"
    table = Table(title=f"tritonclient over HTTP and gRPC, medians of {args.rounds} rounds of "
                  f"{args.requests} requests ({pinning}; ms)")  # fmt: skip
    for column in ("batch", "backend", "http p50", "http p99", "http rps", "grpc p50", "grpc p99",
                   "grpc rps", "grpc/http rps"):  # fmt: skip
        table.add_column(column, justify="right")
    for row in rows:
        h, g = row["http"], row["grpc"]
        table.add_row(
            str(row["batch"]), row["backend"], f"{h['p50_ms']:.3f}", f"{h['p99_ms']:.3f}",
            f"{h['rps']:.0f}", f"{g['p50_ms']:.3f}", f"{g['p99_ms']:.3f}", f"{g['rps']:.0f}",
            f"{row['grpc_over_http_rps']:.3f}",
        )  # fmt: skip
    Console(width=160).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": platform.machine(), "python": platform.python_version()},
        "note": "same run, same gateway: compare the ratio, not absolute numbers",
        "pinned": PINNED,
        "rows": rows,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
