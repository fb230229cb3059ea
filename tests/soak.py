"""Soak: a gateway under mixed traffic for a long time, its memory, file descriptors, event-loop
lag and latency recorded per window, to show that nothing grows without bound.

Traffic: four clients sending back to back, each request with a unique id, batches of 1 to 4
rows, JSON and binary bodies alternating, a label posted for half of them; shadow comparisons on
half the requests; the student's share changed every window (0 -> 0.25 -> 0.5 -> 1 -> 0 ...). The
gateway's stores are small enough (feedback TTL 20 s) to be full, and so steady, after the
warm-up. Memory must then plateau: its slope after the warm-up is reported, and bounded in the
suite's one-minute run (tests/test_soak.py, with a 5 s TTL so that 45 s of it are steady).

    python -m tests.soak --minutes 30        # make soak; results/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from controller.local.processes import GatewayProcess
from tests.fake_backend import ticket_of
from tests.servers import ADMIN_TOKEN

RESULTS = Path(__file__).parent / "benchmarks" / "results" / "soak.json"
SHARES = (0.0, 0.25, 0.5, 1.0)
FEEDBACK_TTL_S = 20


def config(feedback_ttl_s: float = FEEDBACK_TTL_S) -> dict[str, Any]:
    return {
        "shadow": {"sample_rate": 0.5},
        "feedback": {"ttl_seconds": feedback_ttl_s},
        "traffic": {"seed": 7},
    }


@dataclass
class Window:
    ended_at_s: float
    requests: int
    errors: int
    p99_ms: float
    rss_mib: float
    open_fds: int
    loop_lag_p99_ms: float
    feedback_pending: float


class _Traffic:
    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.errors = 0
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(30)

    def take(self) -> tuple[list[float], int]:
        with self._lock:
            taken, self.latencies = self.latencies, []
            errors, self.errors = self.errors, 0
        return taken, errors

    def _client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            sent = 0
            while not self.stopped.is_set():
                rows = int(rng.integers(1, 5))
                x = rng.random((rows, 64), dtype=np.float32) * 16
                request_id = uuid.uuid4().hex
                start = time.perf_counter()
                answer = client.post(
                    "/v2/models/digits/infer", **_body(x, request_id, sent % 2 == 1)
                )
                took = time.perf_counter() - start
                sent += 1
                ok = answer.status_code == 200
                if ok and rng.random() < 0.5:
                    labels = rng.integers(0, 10, rows).tolist()
                    feedback = client.post("/v2/models/digits/feedback",
                                           json={"id": request_id, "label": labels},
                                           headers=ticket_of(answer))  # fmt: skip
                    ok = feedback.status_code == 200
                with self._lock:
                    self.latencies.append(took)
                    self.errors += not ok


def _body(x: np.ndarray, request_id: str, binary: bool) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": "pixels", "shape": list(x.shape), "datatype": "FP32"}
    if not binary:
        tensor["data"] = x.reshape(-1).tolist()
        return {"content": orjson.dumps({"id": request_id, "inputs": [tensor]}),
                "headers": {"content-type": "application/json"}}  # fmt: skip
    data = x.tobytes()
    tensor["parameters"] = {"binary_data_size": len(data)}
    header = orjson.dumps({"id": request_id, "inputs": [tensor]})
    return {"content": header + data,
            "headers": {"inference-header-content-length": str(len(header))}}  # fmt: skip


def _proc(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def _scrape(url: str) -> tuple[dict[float, float], float]:
    """The loop-lag histogram's cumulative buckets, and the feedback store's size."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    buckets: dict[float, float] = {}
    pending = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_event_loop_lag_seconds_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "gateway_feedback_pending":
                pending = sample.value
    return buckets, pending


def _p99_of_buckets(before: dict[float, float], after: dict[float, float]) -> float:
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1]
    for le, cumulative in counts:
        if total and cumulative >= 0.99 * total:
            return le
    return 0.0


def soak(
    seconds: float,
    window_seconds: float,
    work_dir: Path,
    clients: int = 4,
    feedback_ttl_s: float = FEEDBACK_TTL_S,
) -> list[Window]:
    gateway = GatewayProcess(work_dir, config(feedback_ttl_s), admin_token=ADMIN_TOKEN).start()
    assert gateway.pid is not None
    traffic = _Traffic(gateway.url, clients)
    windows: list[Window] = []
    started = time.monotonic()
    try:
        traffic.start()
        lag_before, _ = _scrape(gateway.url)
        for n in range(max(1, round(seconds / window_seconds))):
            gateway.set_share(SHARES[n % len(SHARES)])
            time.sleep(max(0.0, started + (n + 1) * window_seconds - time.monotonic()))
            latencies, errors = traffic.take()
            lag_after, pending = _scrape(gateway.url)
            rss, fds = _proc(gateway.pid)
            windows.append(Window(
                ended_at_s=round(time.monotonic() - started, 1),
                requests=len(latencies),
                errors=errors,
                p99_ms=float(np.percentile(np.array(latencies) * 1000, 99)) if latencies else 0.0,
                rss_mib=round(rss, 1),
                open_fds=fds,
                loop_lag_p99_ms=_p99_of_buckets(lag_before, lag_after) * 1000,
                feedback_pending=pending,
            ))  # fmt: skip
            lag_before = lag_after
            print(windows[-1], flush=True)
    finally:
        traffic.stop()
        gateway.stop()
    return windows


def rss_slope_mib_per_minute(windows: list[Window], warm_up_s: float) -> float:
    """Least-squares slope of RSS over the windows after the warm-up."""
    steady = [w for w in windows if w.ended_at_s > warm_up_s]
    if len(steady) < 2:
        return 0.0
    minutes = np.array([w.ended_at_s for w in steady]) / 60.0
    slope = np.polyfit(minutes, np.array([w.rss_mib for w in steady]), 1)[0]
    return float(slope)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--window-seconds", type=float, default=60.0)
    parser.add_argument("--warm-up-seconds", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        windows = soak(args.minutes * 60, args.window_seconds, Path(tmp))
    slope = rss_slope_mib_per_minute(windows, args.warm_up_seconds)
    steady = [w for w in windows if w.ended_at_s > args.warm_up_seconds] or windows
    summary = {
        "machine": platform.platform(),
        "minutes": args.minutes,
        "rss_slope_mib_per_minute_after_warm_up": round(slope, 3),
        "rss_mib_first_last_after_warm_up": [steady[0].rss_mib, steady[-1].rss_mib],
        "open_fds_min_max": [min(w.open_fds for w in windows), max(w.open_fds for w in windows)],
        "requests": sum(w.requests for w in windows),
        "errors": sum(w.errors for w in windows),
        "windows": [asdict(w) for w in windows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    totals = f"{summary['requests']} requests, {summary['errors']} errors"
    print(f"RSS slope after warm-up: {slope:+.3f} MiB/min; {totals}; results: {args.out}")


if __name__ == "__main__":
    main()
