"""A traffic generator: replays a saved test split (the digits', or the text pair's: each row
its own length) through a gateway with tritonclient (over HTTP, or gRPC when given the gateway's
gRPC address), and posts each true label back as feedback (which also tells which backend served
the request).

Used by the demo, the stack, the tests and the benchmarks. Each worker thread has its own clients.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from controller.local.processes import LOCAL_FEEDBACK_TOKEN
from models import TEST_SPLIT_PATH
from models.data import load_test_split
from models.text.data import load_test_split as load_text_split


@dataclass(frozen=True)
class Sample:
    """One request as the client saw it."""

    row: int  # index into the test split
    request_id: str
    ok: bool
    latency_seconds: float
    backend: str | None = None  # from the feedback answer; None without feedback
    correct: bool | None = None
    error: str | None = None


@dataclass
class TrafficReport:
    samples: list[Sample] = field(default_factory=list)

    def by_backend(self, backend: str) -> list[Sample]:
        return [s for s in self.samples if s.backend == backend]

    @property
    def errors(self) -> list[Sample]:
        return [s for s in self.samples if not s.ok]


def request_rows(split_path: Path) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Each row of a saved test split as one request's named inputs, and the labels: the digits'
    ``pixels``, or a text split's ``input_ids`` and ``attention_mask`` cut to the row's own
    length (no padding travels: the gateway pads if it batches)."""
    with np.load(split_path) as data:
        text = "input_ids" in data.files
    if not text:
        split = load_test_split(split_path)
        return [{"pixels": split.x[i : i + 1]} for i in range(len(split.y))], split.y
    sequences = load_text_split(split_path)
    lengths = sequences.attention_mask.sum(1)
    rows = [
        {name: array[i : i + 1, : lengths[i]] for name, array in sequences.inputs().items()}
        for i in range(len(sequences.y))
    ]
    return rows, sequences.y


def host_port(url: str) -> str:
    """tritonclient wants ``host:port``; accept a full URL too."""
    return urlsplit(url).netloc if "://" in url else url


class TrafficGenerator:
    def __init__(
        self,
        gateway_url: str,
        model: str = "digits",
        split_path: Path = TEST_SPLIT_PATH,
        send_feedback: bool = True,
        headers: Callable[[int], dict[str, str]] | None = None,
        grpc_address: str | None = None,
        feedback_url: str | None = None,
    ) -> None:
        self._address = host_port(gateway_url)
        self._grpc_address = grpc_address  # infer over gRPC; feedback still goes over HTTP
        # labels to another replica of a fleet, which joins them through the state store
        self._base_url = f"http://{host_port(feedback_url or gateway_url)}"
        self._model = model
        self._rows, self._y = request_rows(split_path)
        self._send_feedback = send_feedback
        self._headers = headers or (lambda _: {})
        self._counter = 0
        self._lock = threading.Lock()

    def run(
        self, requests: int | None = None, stop: threading.Event | None = None, workers: int = 1
    ) -> TrafficReport:
        """Sends ``requests`` requests (or until ``stop`` is set) from ``workers`` threads."""
        if requests is None and stop is None:
            raise ValueError("give a request count or a stop event")
        report = TrafficReport()
        with self._lock:
            self._counter = 0
        threads = [
            threading.Thread(target=self._worker, args=(requests, stop, report), daemon=True)
            for _ in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return report

    def _next_index(self, limit: int | None) -> int | None:
        with self._lock:
            if limit is not None and self._counter >= limit:
                return None
            self._counter += 1
            return self._counter - 1

    def _worker(
        self, limit: int | None, stop: threading.Event | None, report: TrafficReport
    ) -> None:
        client: Any
        if self._grpc_address:
            client = triton_grpc.InferenceServerClient(self._grpc_address)
        else:
            client = triton_http.InferenceServerClient(self._address, network_timeout=30.0)
        with httpx.Client(base_url=self._base_url, timeout=30.0) as http:
            while stop is None or not stop.is_set():
                number = self._next_index(limit)
                if number is None:
                    break
                sample = self._one(client, http, number)
                with self._lock:
                    report.samples.append(sample)
        client.close()

    def _one(self, client: Any, http: httpx.Client, number: int) -> Sample:
        row = number % len(self._y)
        protocol = triton_grpc if self._grpc_address else triton_http
        inputs = []
        for name, array in self._rows[row].items():
            tensor = protocol.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        start = time.perf_counter()
        try:
            result = client.infer(self._model, inputs, headers=self._headers(number))
        except InferenceServerException as exc:
            return Sample(row, "", False, time.perf_counter() - start, error=str(exc))
        except Exception as exc:  # a reset socket: tritonclient's HTTP client does not wrap it
            return Sample(row, "", False, time.perf_counter() - start, error=repr(exc))
        latency = time.perf_counter() - start
        response = result.get_response()
        request_id = str(response.id if self._grpc_address else response["id"])
        if not self._send_feedback:
            return Sample(row, request_id, True, latency)
        try:  # a label the gateway does not take is the client's error too
            answer = http.post(
                f"/v2/models/{self._model}/feedback",
                json={"id": request_id, "label": int(self._y[row])},
                headers={"Authorization": f"Bearer {LOCAL_FEEDBACK_TOKEN}"},
            )
            answer.raise_for_status()
            scored = answer.json()
        except (httpx.HTTPError, ValueError) as exc:  # ValueError: an answer that is not JSON
            return Sample(row, request_id, False, latency, error=f"feedback: {exc!r}")
        return Sample(row, request_id, True, latency, scored["backend"], scored["correct"] == 1)


def percentile_ms(samples: list[Sample], quantile: float) -> float:
    if not samples:
        return float("nan")
    return float(np.quantile([s.latency_seconds for s in samples], quantile) * 1000.0)
