"""`distill-canary watch` end to end: a real gateway serving the shipped digits student at 100 %,
a real traffic generator, the real CLI in a subprocess recording its reference from the first
seconds of traffic. Unshifted traffic is judged look after look without an alarm; inverted pixels
are rolled back (share 0 on the gateway, exit 3) within seconds."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from controller.drift import DriftCounts
from controller.sources.prometheus import PrometheusSource
from controller.sources.scrape import ScrapeSource
from models import TEST_SPLIT_PATH
from models.data import load_test_split
from tests.rollouts import canary_env, saved
from tests.servers import (
    ADMIN_TOKEN,
    BIN,
    PrometheusProcess,
    TestGateway,
    free_port,
    read_metric,
    wait_until,
)

pytestmark = pytest.mark.e2e


class Traffic(threading.Thread):
    """Single-row requests from the test split, as fast as one client sends them; ``shifted``
    turns them into inverted pixels."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.shifted, self.stopped = url, False, threading.Event()
        self.x = load_test_split(TEST_SPLIT_PATH).x

    def run(self) -> None:
        rng = np.random.default_rng(0)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stopped.is_set():
                row = self.x[rng.integers(len(self.x))]
                row = 16.0 - row if self.shifted else row
                client.post("/v2/models/digits/infer", json={"inputs": [
                    {"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                     "data": row.tolist()}]})  # fmt: skip


def test_watch_keeps_quiet_on_unshifted_traffic_and_rolls_back_inverted_pixels(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    gateway = start_gateway({"traffic": {"student_share": 1.0}, "shadow": {"sample_rate": 0.0},
                             "drift": {"sample_rate": 1.0}})  # fmt: skip
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"model": "digits", "gates": {"min_agreement": 0.9}, "watch": {
        "interval_seconds": 1.0, "reference_seconds": 3.0, "min_rows": 100,
        "on_breach": "rollback"}}))  # fmt: skip
    reference = tmp_path / "reference.json"
    traffic = Traffic(gateway.url)
    traffic.start()
    lines: list[str] = []
    command = [str(BIN / "distill-canary"), "watch", "--model", "digits", "--policy", str(policy),
               "--gateway", gateway.url, "--reference", str(reference),
               "--state", str(tmp_path / "watch.db")]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=canary_env()) as watch:  # fmt: skip
        reader = threading.Thread(target=lambda: lines.extend(iter(watch.stdout.readline, "")),  # type: ignore[union-attr]
                                  daemon=True)  # fmt: skip
        reader.start()
        try:
            wait_until(lambda: any("reference recorded" in line for line in lines), 60,
                       "the reference")  # fmt: skip
            wait_until(lambda: sum(line.strip() == "watch watching: no breach" for line in lines)
                       >= 5, 60, "five judged looks of unshifted traffic")  # fmt: skip
            assert not any("rolled_back" in line or "alerted" in line for line in lines)
            assert reference.exists()
            traffic.shifted, shifted_at = True, time.monotonic()
            code = watch.wait(timeout=60)
            took = time.monotonic() - shifted_at
        finally:
            traffic.stopped.set()
            if watch.poll() is None:
                watch.terminate()
    reader.join(timeout=5)
    assert code == 3, "".join(lines[-20:])
    # whichever shows first in a window holding a few seconds of unshifted traffic: the inputs
    # or the student's predicted classes (both move when pixels are inverted)
    assert any(line.startswith(("watch rolled_back: drift: max_input_psi input pixels",
                                "watch rolled_back: drift: max_prediction_psi prediction"))
               for line in lines), "".join(lines[-20:])  # fmt: skip
    share = read_metric(gateway.metrics_text(), "gateway_traffic_share", model="digits",
                        backend="student")  # fmt: skip
    assert share == 0.0
    assert took < 15  # measured: 1-2 s at a look a second


def test_run_with_a_watch_stays_after_promotion_and_rolls_back_a_drift(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    """`distill-canary run` with a policy's watch: promotes, then judges the student against the
    last step's traffic (no reference to record) and rolls back inverted pixels, exit 3."""
    gateway = start_gateway({"shadow": {"sample_rate": 0.5}, "drift": {"sample_rate": 1.0}})
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "model": "digits", "steps": [50, 100], "bake_seconds": 2, "interval_seconds": 0.5,
        "min_requests": 60, "max_step_seconds": 90,
        "gates": {"min_agreement": 0.8, "max_error_rate": 0.05},
        "watch": {"interval_seconds": 1.0, "min_rows": 100, "on_breach": "rollback"}}))  # fmt: skip
    traffic = Traffic(gateway.url)
    traffic.start()
    lines: list[str] = []
    command = [str(BIN / "distill-canary"), "run", "--policy", str(policy), "--state",
               str(tmp_path / "rollout.db"), "--gateway", gateway.url]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=canary_env()) as run:  # fmt: skip
        reader = threading.Thread(target=lambda: lines.extend(iter(run.stdout.readline, "")),  # type: ignore[union-attr]
                                  daemon=True)  # fmt: skip
        reader.start()
        try:
            wait_until(lambda: sum(line.strip() == "watch watching: no breach" for line in lines)
                       >= 3, 120, "the watch judging the promoted student")  # fmt: skip
            assert not any("recording" in line for line in lines)  # the last step is the reference
            traffic.shifted = True
            code = run.wait(timeout=60)
        finally:
            traffic.stopped.set()
            if run.poll() is None:
                run.terminate()
    reader.join(timeout=5)
    assert code == 3, "".join(lines[-20:])
    assert any(line.startswith("watch rolled_back: drift: ") for line in lines)
    rollout = saved(tmp_path / "rollout.db")  # what `distill-canary status` reads
    assert rollout.phase.value == "RolledBack" and rollout.rollback_reason.startswith("drift: ")
    assert read_metric(gateway.metrics_text(), "gateway_traffic_share", model="digits",
                       backend="student") == 0.0  # fmt: skip


def test_the_prometheus_source_reads_the_same_drift_counts_as_a_scrape(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    """`run --prometheus-url` hands the watch the Prometheus source: its drift counts are the
    gateway's own (within PromQL's extrapolation), not empty (before: no gateway_drift_* queried,
    a watch blind for as long as it ran)."""
    gateway = start_gateway({"traffic": {"student_share": 1.0}, "shadow": {"sample_rate": 0.0},
                             "drift": {"sample_rate": 1.0}})  # fmt: skip
    prometheus = PrometheusProcess(tmp_path, {"gateway": [gateway.address]}).start()

    def last_scrape() -> float:
        result = prometheus.query("timestamp(up)")
        return float(result[0]["value"][1]) if result else 0.0

    try:
        with httpx.Client(timeout=10) as client:
            direct = ScrapeSource([gateway.url], client)
            promql = PrometheusSource(prometheus.url, "digits", client)
            direct_mark, promql_mark = direct.mark(), promql.mark()
            marked = time.time()
            wait_until(lambda: last_scrape() > marked, 30, "a scrape before traffic")
            traffic = Traffic(gateway.url)
            traffic.start()
            wait_until(lambda: DriftCounts.of(direct.increase_since(direct_mark), "digits").rows
                       >= 400, 120, "drift rows")  # fmt: skip
            traffic.stopped.set()
            traffic.join(10)
            stopped = time.time()
            wait_until(lambda: last_scrape() > stopped + 1, 30, "a scrape after traffic")
            exact = DriftCounts.of(direct.increase_since(direct_mark), "digits")
            seen = DriftCounts.of(promql.increase_since(promql_mark), "digits")
    finally:
        prometheus.stop()
    assert seen.rows == pytest.approx(exact.rows, rel=0.15)
    assert seen.student_rows == pytest.approx(exact.student_rows, rel=0.15)
    assert seen.confidence_sum == pytest.approx(exact.confidence_sum, rel=0.15)
    assert set(seen.inputs) == set(exact.inputs) and set(seen.predictions) == set(exact.predictions)
    for key, bins in exact.predictions.items():  # per class, as the prediction PSI reads them
        for label, count in bins.items():
            assert seen.predictions[key].get(label, 0.0) == pytest.approx(count, rel=0.2, abs=5)


def test_a_watch_sets_the_shadow_rate_counts_its_looks_stops_at_sigterm_and_resumes_its_window(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    """`distill-canary watch` with a look a minute: the gateway samples shadow at the watch's
    1 % from its first look (its configured 30 % back after), the watch's /metrics counts its
    looks by model, SIGTERM ends it within seconds, not at the next look, and a watch started
    again on the state file goes on with the window and reference it saved."""
    gateway = start_gateway({"traffic": {"student_share": 1.0}, "shadow": {"sample_rate": 0.3},
                             "drift": {"sample_rate": 1.0}})  # fmt: skip
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"model": "digits", "gates": {"min_agreement": 0.9}, "watch": {
        "interval_seconds": 60.0, "reference_seconds": 1.0, "min_rows": 1,
        "shadow_sample_rate": 0.01}}))  # fmt: skip
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def shadow_rate() -> float:
        answer = httpx.get(f"{gateway.url}/admin/models/digits/shadow", headers=admin)
        return float(answer.json()["sample_rate"])

    def watch(port: int) -> tuple[subprocess.Popen[str], list[str]]:
        command = [str(BIN / "distill-canary"), "watch", "--model", "digits", "--policy",
                   str(policy), "--gateway", gateway.url, "--state", str(tmp_path / "watch.db"),
                   "--metrics-port", str(port)]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env=canary_env())  # fmt: skip
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")),  # type: ignore[union-attr]
                         daemon=True).start()  # fmt: skip
        return process, lines

    def stop(process: subprocess.Popen[str]) -> float:
        """SIGTERM; how long the watch took to exit (0 expected)."""
        sent = time.monotonic()
        process.terminate()
        assert process.wait(timeout=15) == 0
        return time.monotonic() - sent

    def ended(process: subprocess.Popen[str], lines: list[str]) -> None:
        """Killed if still running; its output read to the end and the pipe closed."""
        if process.poll() is None:
            process.kill()
        process.wait(timeout=15)
        assert process.stdout is not None
        lines.extend(process.stdout.readlines())
        process.stdout.close()

    traffic = Traffic(gateway.url)
    traffic.start()
    port = free_port()
    first, lines = watch(port)
    try:
        wait_until(lambda: any("watch recording" in line for line in lines), 60, "the first look")
        assert shadow_rate() == 0.01
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert read_metric(scraped, "canary_watch_looks_total", model="digits",
                           outcome="recording") == 1.0  # fmt: skip
        assert read_metric(scraped, "canary_watch_shadow_sample_rate", model="digits") == 0.01
        took = stop(first)
    finally:
        ended(first, lines)
    assert took < 5, f"SIGTERM took {took:.1f} s to stop a watch between looks a minute apart"
    assert shadow_rate() == 0.3  # the gateway's own rate, put back
    # again, on the same state file: the reference's recording it began goes on (its first
    # look, a minute early, records a reference; a new window would start recording again)
    second, lines = watch(free_port())
    try:
        wait_until(lambda: any(line.startswith("watch ") for line in lines), 60,
                   "the second watch's first look")  # fmt: skip
        looks = [line for line in lines if line.startswith("watch ")]
        assert looks[0].startswith("watch watching: reference recorded: "), "".join(lines)
        assert any("resumed the window" in line for line in lines), "".join(lines)
        stop(second)
    finally:
        traffic.stopped.set()
        ended(second, lines)
