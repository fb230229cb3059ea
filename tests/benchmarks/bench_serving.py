"""Benchmark: the gateway beside the least a server can do, in one run (issue 9's table).

Each server runs alone, pinned to CPU 0; ``wrk`` (C, one thread, so the client never saturates
first) loads it from CPU 1, V2 JSON at batch 1 unless said otherwise. The references are
``naive_handler.py``: a no-op route, and a 30-line FastAPI handler running the student or the
teacher in process. The gateway runs in the config users deploy (no ``overload:`` section), and
only answers served (2xx) count as throughput: every row shows its share of other answers, and a
gateway row that sheds more than 1 % where its naive handler shed nothing fails the run.

- concurrency 1: p50; concurrency 16: requests per second, p50, p99; for the no-op route, the
  naive handlers, and the gateway serving the student (share 1), the teacher (share 0), and the
  student with 10 % shadow traffic.
- concurrency 64, the teacher: the naive handler, the gateway, and the gateway with dynamic
  batching (``max_batch_size`` 64, ``max_delay_us`` 500), each at c1 and c16 too; and the gateway
  at a 50 % split with 10 % shadow traffic at c1, c16 and c64.
- batch 64 rows per request to the gateway's student at concurrency 16: V2 JSON against the
  binary tensor extension, in rows per second.

Every server starts at once and each measurement is repeated in ``--rounds`` interleaved rounds
(this machine's throughput drifts by up to 2x from one 3-second run to the next); the table holds
medians, and each ratio is the median over the rounds of that round's ratio (its two sides measured
next to each other). Run with ``make bench``; results
go to ``tests/benchmarks/results/bench_serving.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
from rich.console import Console
from rich.table import Table

from controller.local.processes import ManagedProcess, free_port
from models import STUDENT_PATH, TEACHER_PATH
from tests.benchmarks.bench_protocols import PINNED, PinnedGateway, median_of

RESULTS = Path(__file__).parent / "results" / "bench_serving.json"
ONE_ROW = np.full((1, 64), 0.5, dtype=np.float32)
SHED_LIMIT = 0.01
"""A gateway row may answer at most this share with anything but 2xx (where the naive handler at
the same concurrency answered everything)."""
BATCHED = {"batching": {"max_batch_size": 64, "max_delay_us": 500}}

REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "seconds": %f, "p50_us": %f, "p99_us": %f, ' ..
    '"errors": %d, "non_2xx": %d}\\n', summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.timeout,
    e.status))
end
"""


class NaiveServer(ManagedProcess):
    """``naive_handler.py`` under uvicorn, pinned like the gateway."""

    name = "naive handler"

    def __init__(self, work_dir: Path, model: Path) -> None:
        self.port = free_port()
        self.model = model
        self.log_path = work_dir / f"naive-{self.port}.log"

    def command(self) -> list[str]:
        pin = ["taskset", "-c", "0"] if PINNED else []
        return [*pin, sys.executable, "-m", "uvicorn",
                "tests.benchmarks.naive_handler:app", "--port", str(self.port),
                "--log-level", "warning", "--no-access-log"]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return {**os.environ, "NAIVE_MODEL": str(self.model)}

    def is_ready(self) -> bool:
        return httpx.get(f"http://127.0.0.1:{self.port}/openapi.json").status_code == 200


class RawNoopServer(NaiveServer):
    """``raw_noop.py``: uvicorn and nothing else, pinned like the gateway."""

    name = "raw ASGI no-op"

    def __init__(self, work_dir: Path) -> None:
        super().__init__(work_dir, TEACHER_PATH)

    def command(self) -> list[str]:
        pin = ["taskset", "-c", "0"] if PINNED else []
        return [*pin, sys.executable, "-m", "uvicorn", "tests.benchmarks.raw_noop:app",
                "--port", str(self.port), "--log-level", "warning", "--no-access-log"]  # fmt: skip

    def is_ready(self) -> bool:
        return httpx.post(f"http://127.0.0.1:{self.port}/", content=b"{}").status_code == 200


def model_seconds_per_row(path: Path) -> float:
    """The model's own time per row in a batch, at the batch size where it is least (8 to 64:
    what dynamic batching forms at c64), on one thread as the gateway runs it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])
    best = float("inf")
    for rows in (8, 16, 32, 64):
        x = np.full((rows, 64), 0.5, dtype=np.float32)
        for _ in range(20):
            session.run(None, {"pixels": x})
        started, calls = time.perf_counter(), 200
        for _ in range(calls):
            session.run(None, {"pixels": x})
        best = min(best, (time.perf_counter() - started) / calls / rows)
    return best


def json_body(x: np.ndarray) -> bytes:
    tensor = {"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
              "data": x.reshape(-1).tolist()}  # fmt: skip
    return orjson.dumps({"inputs": [tensor]})


def binary_body(x: np.ndarray) -> tuple[bytes, int]:
    header = orjson.dumps({
        "inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    })  # fmt: skip
    return header + x.tobytes(), len(header)


def wrk_script(tmp: Path, body: bytes, headers: dict[str, str], extra: str = "") -> Path:
    """A POST of ``body`` (any bytes, escaped for Lua), ``extra`` Lua (say a ``delay()``), and a
    JSON summary at the end."""
    script = tmp / f"post-{len(body)}-{len(headers)}-{len(extra)}.lua"
    escaped = "".join(f"\\{byte}" for byte in body)
    lines = ['wrk.method = "POST"', *(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()),
             f'wrk.body = "{escaped}"', extra]  # fmt: skip
    script.write_text("\n".join(lines) + "\n" + REPORT)
    return script


def wrk_command(port: int, path: str, connections: int, seconds: float, script: Path) -> list[str]:
    """One wrk thread (on CPU 1 when pinned) for whole seconds (wrk takes no fractions)."""
    pin = ["taskset", "-c", "1"] if PINNED else []
    return [*pin, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "-s", str(script), f"http://127.0.0.1:{port}{path}"]  # fmt: skip


def wrk_summary(stdout: str) -> dict[str, Any]:
    """The JSON line REPORT writes last."""
    summary: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return summary


def non_2xx_share(summary: dict[str, Any]) -> float:
    """The share of attempts (answers and connection errors) not answered 2xx."""
    failed = summary["errors"] + summary["non_2xx"]
    return float(failed / max(1, summary["requests"] + summary["errors"]))


def wrk(port: int, path: str, connections: int, seconds: float, script: Path) -> dict[str, float]:
    """One wrk run and its summary."""
    done = subprocess.run(wrk_command(port, path, connections, seconds, script),
                          capture_output=True, text=True, check=True)  # fmt: skip
    summary = wrk_summary(done.stdout)
    return {
        "rps": (summary["requests"] - summary["non_2xx"]) / summary["seconds"],  # served only
        "p50_ms": summary["p50_us"] / 1000.0,
        "p99_ms": summary["p99_us"] / 1000.0,
        "non_2xx_share": non_2xx_share(summary),
    }


# What each server is measured at: (name, path, levels), "batch 64" on the gateway's student.
# Each ratio's two sides are measured next to each other in every round.
PLAN = (
    ("no-op route", "/noop", ("c1", "c16")),
    ("raw ASGI no-op", "/", ("c64",)),
    ("naive student", "/v2/models/digits/infer", ("c1", "c16")),
    ("gateway student", "/v2/models/digits/infer", ("c1", "c16", "batch 64")),
    ("gateway student + 10 % shadow", "/v2/models/digits/infer", ("c1", "c16")),
    ("naive teacher", "/v2/models/digits/infer", ("c1", "c16", "c64")),
    ("gateway teacher", "/v2/models/digits/infer", ("c1", "c16", "c64")),
    ("gateway teacher, batched", "/v2/models/digits/infer", ("c1", "c16", "c64")),
    ("gateway 50 % split + 10 % shadow", "/v2/models/digits/infer", ("c1", "c16", "c64")),
)
NAIVE_OF = {"gateway student": "naive student", "gateway student + 10 % shadow": "naive student",
            "gateway teacher": "naive teacher", "gateway teacher, batched": "naive teacher",
            "gateway 50 % split + 10 % shadow": "naive teacher"}  # fmt: skip
GATEWAYS: dict[str, dict[str, Any]] = {
    "gateway student": {"traffic": {"student_share": 1.0}, "shadow": {"sample_rate": 0}},
    "gateway teacher": {"traffic": {"student_share": 0.0}, "shadow": {"sample_rate": 0}},
    "gateway student + 10 % shadow": {"traffic": {"student_share": 1.0},
                                      "shadow": {"sample_rate": 0.1}},
    "gateway teacher, batched": {"traffic": {"student_share": 0.0}, "shadow": {"sample_rate": 0},
                                 "teacher": {"path": str(TEACHER_PATH), **BATCHED}},
    "gateway 50 % split + 10 % shadow": {"traffic": {"student_share": 0.5},
                                         "shadow": {"sample_rate": 0.1}},
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    seconds = args.seconds
    teacher_row_seconds = model_seconds_per_row(TEACHER_PATH)  # before any server competes
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        one = wrk_script(tmp, json_body(ONE_ROW), {"Content-Type": "application/json"})
        # Every server up at once (idle ones cost nothing), measured in interleaved rounds, so
        # a slow minute of the machine lands on all of them rather than on one.
        servers: dict[str, Any] = {}
        try:
            naive_student = servers["naive student"] = NaiveServer(tmp, STUDENT_PATH).start()
            servers["no-op route"] = naive_student
            servers["raw ASGI no-op"] = RawNoopServer(tmp).start()
            servers["naive teacher"] = NaiveServer(tmp, TEACHER_PATH).start()
            for name, config in GATEWAYS.items():
                servers[name] = PinnedGateway(tmp, config).start()  # the default overload
            for name, path, _ in PLAN:
                wrk(servers[name].port, path, 16, 1, one)  # warm-up, not reported
            runs: dict[str, dict[str, list[dict[str, float]]]] = {}
            for _ in range(args.rounds):
                for name, path, levels in PLAN:
                    port = servers[name].port
                    for level in levels:
                        got = (_batch_64(port, tmp, seconds) if level == "batch 64" else
                               wrk(port, path, int(level[1:]), seconds, one))  # fmt: skip
                        runs.setdefault(name, {}).setdefault(level, []).append(got)
        finally:
            for server in {id(s): s for s in servers.values()}.values():
                server.stop()
    rows: dict[str, dict[str, Any]] = {
        name: {level: median_of(measured) for level, measured in levels.items()}
        for name, levels in runs.items()
    }
    rows["batch 64"] = rows["gateway student"].pop("batch 64")
    # Each ratio in each round, then their median: this machine's speed drifts by 2x within a
    # minute, so the two sides of a ratio are best compared within one round.
    per_round = [_ratios(_round(runs, r)) for r in range(args.rounds)]
    ratios = {key: statistics.median(each[key] for each in per_round) for key in per_round[0]}
    budget = _cpu_budget(rows, teacher_row_seconds)
    _print(rows, ratios, seconds)
    Console(width=170).print(
        "the batched teacher at c64, in CPU microseconds a request (the "
        "server's core is saturated there, so 1 / req/s):"
    )
    for name, value in budget.items():
        print(f"  {name}: {value:.1f}")
    failures = _shedding_failures(rows)
    for failure in failures:
        print(f"FAILED: {failure}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": platform.machine(), "python": platform.python_version()},
        "note": "same run: compare the ratios, not absolute numbers",
        "pinned": PINNED, "seconds": seconds, "rounds": args.rounds, "rows": rows,
        "ratios": ratios, "ratios_by_round": per_round, "shedding_failures": failures,
        "batched_teacher_c64_cpu_us": budget,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")
    if failures:
        sys.exit(1)


def _shedding_failures(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Gateway rows that turned away more than SHED_LIMIT where the naive handler served all."""
    failures = []
    for name, naive in NAIVE_OF.items():
        for level, got in rows[name].items():
            reference = rows[naive].get(level)
            if (reference is not None and reference["non_2xx_share"] == 0
                    and got["non_2xx_share"] > SHED_LIMIT):  # fmt: skip
                failures.append(f"{name} at {level}: {got['non_2xx_share']:.1%} non-2xx "
                                f"(the naive handler: none)")  # fmt: skip
    return failures


def _batch_64(port: int, tmp: Path, seconds: float) -> dict[str, float]:
    x = np.resize(np.linspace(0, 16, 64, dtype=np.float32), (64, 64))
    body, header_length = binary_body(x)
    as_json = wrk_script(tmp, json_body(x), {"Content-Type": "application/json"})
    binary_headers = {"Content-Type": "application/octet-stream",
                      "Inference-Header-Content-Length": str(header_length)}  # fmt: skip
    as_binary = wrk_script(tmp, body, binary_headers)
    infer = "/v2/models/digits/infer"
    return {
        "json_rows_per_s": 64 * wrk(port, infer, 16, seconds, as_json)["rps"],
        "binary_rows_per_s": 64 * wrk(port, infer, 16, seconds, as_binary)["rps"],
    }


def _round(runs: dict[str, dict[str, list[dict[str, float]]]], r: int) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {
        name: {level: measured[r] for level, measured in levels.items()}
        for name, levels in runs.items()
    }
    rows["batch 64"] = rows["gateway student"].pop("batch 64")
    return rows


def _cpu_budget(rows: dict[str, dict[str, Any]], model_row_seconds: float) -> dict[str, float]:
    """Where a batched request's CPU goes at c64, against what 3x the naive handler allows:
    uvicorn's own floor (the raw no-op) and the model's time per row are spent whatever the
    gateway does; the rest is the gateway's own work (decode, route, admit, batch, measure,
    encode)."""
    floor = 1e6 / rows["raw ASGI no-op"]["c64"]["rps"]
    model = 1e6 * model_row_seconds
    allowed = 1e6 / (3 * rows["naive teacher"]["c64"]["rps"])
    spent = 1e6 / rows["gateway teacher, batched"]["c64"]["rps"]
    return {
        "a request at 3x the naive handler": allowed,
        "uvicorn's floor (raw ASGI no-op)": floor,
        "the teacher's own time per row (best batch of 8-64)": model,
        "left for the gateway's own work at 3x": allowed - floor - model,
        "the gateway's own work now": spent - floor - model,
    }


def _ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The issue's targets, each as the ratio it names (for one round's measurements)."""
    ns, nt = rows["naive student"], rows["naive teacher"]
    gs, gt = rows["gateway student"], rows["gateway teacher"]
    return {
        "student c16 rps / naive (target >= 0.85)": gs["c16"]["rps"] / ns["c16"]["rps"],
        "student c16 p99 / naive (target <= 1.5)": gs["c16"]["p99_ms"] / ns["c16"]["p99_ms"],
        "teacher c16 rps / naive (target >= 0.85)": gt["c16"]["rps"] / nt["c16"]["rps"],
        "student c1 added p50 ms (target <= 0.15)": gs["c1"]["p50_ms"] - ns["c1"]["p50_ms"],
        "10 % shadow throughput cost (target <= 0.10)":
            1 - rows["gateway student + 10 % shadow"]["c16"]["rps"] / gs["c16"]["rps"],
        "batch 64 binary / JSON rows (target >= 2)":
            rows["batch 64"]["binary_rows_per_s"] / rows["batch 64"]["json_rows_per_s"],
        "batched teacher c64 rps / naive teacher (target >= 3)":
            rows["gateway teacher, batched"]["c64"]["rps"] / nt["c64"]["rps"],
        "batched teacher c64 p99 / unbatched gateway (target < 1)":
            rows["gateway teacher, batched"]["c64"]["p99_ms"] / gt["c64"]["p99_ms"],
    }  # fmt: skip


def _print(rows: dict[str, dict[str, Any]], ratios: dict[str, float], seconds: float) -> None:
    pinning = "server on CPU 0, wrk on CPU 1" if PINNED else "not pinned"
    table = Table(
        title=f"V2 JSON, batch 1, medians of wrk runs of {seconds:g} s ({pinning}; ms; "
        "req/s counts 2xx answers only)"
    )
    for column in ("server", "c1 p50", "c16 req/s", "c16 p50", "c16 p99", "c64 req/s",
                   "c64 p50", "c64 p99", "non-2xx c1/c16/c64"):  # fmt: skip
        table.add_column(column, justify="left" if column == "server" else "right")
    for name, row in rows.items():
        if name == "batch 64":
            continue
        cells = [f"{row['c1']['p50_ms']:.2f}" if "c1" in row else ""]
        for level in ("c16", "c64"):
            got = row.get(level)
            cells += ([f"{got['rps']:.0f}", f"{got['p50_ms']:.2f}", f"{got['p99_ms']:.2f}"]
                      if got else ["", "", ""])  # fmt: skip
        shares = [f"{row[level]['non_2xx_share']:.1%}" if level in row else "-"
                  for level in ("c1", "c16", "c64")]  # fmt: skip
        table.add_row(name, *cells, " / ".join(shares))
    console = Console(width=170)
    console.print(table)
    batch = rows["batch 64"]
    console.print(f"batch 64 to the gateway's student at c16: JSON {batch['json_rows_per_s']:.0f}"
                  f" rows/s, binary {batch['binary_rows_per_s']:.0f} rows/s")  # fmt: skip
    console.print("ratios (median of each round's ratio):")
    for name, value in ratios.items():
        console.print(f"  {name}: {value:.3f}")


if __name__ == "__main__":
    main()
