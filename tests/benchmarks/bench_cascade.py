"""Benchmark: the cascade against the teacher alone and the student alone, in one run (issue 33).

On each shipped pair (the digits MLP pair, and the text transformer pair of ``models/text``),
three gateways: the teacher alone (share 0), the student alone (share 1, split), and the cascade
(share 1, ``traffic.mode: cascade`` at a fixed top-probability threshold). For each:

- quality, from every row of the pair's saved test split sent alone over HTTP: accuracy against
  the labels, agreement with the teacher's answers, and the share of requests escalated (the
  teacher's calls per request: 1 for the teacher alone, 0 for the student alone);
- speed, from ``wrk`` (one thread, pinned to CPU 1; the gateways on CPU 0) at concurrency 16
  posting test-split rows at random: requests per second (2xx only), p50, p99;
- cost per 1,000 requests: the gateway's own cost counter (each backend's ``cost_per_hour`` x the
  wall time of its live calls) over the requests it answered during the wrk runs.

The goal: within 0.1 point of the teacher's accuracy at under 15 % of the teacher's calls, on
both pairs. Every gateway starts at once and the speed runs are interleaved in ``--rounds``
rounds (medians). Run with ``make bench``; results go to
``tests/benchmarks/results/bench_cascade.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from models import STUDENT_PATH, TEACHER_PATH, TEST_SPLIT_PATH
from models.data import load_test_split
from models.text import TEXT_STUDENT_PATH, TEXT_TEACHER_PATH, TEXT_TEST_SPLIT_PATH
from models.text.data import load_test_split as load_text_split
from tests.benchmarks.bench_protocols import PINNED, PinnedGateway, median_of
from tests.benchmarks.bench_serving import REPORT, wrk
from tests.servers import read_total

RESULTS = Path(__file__).parent / "results" / "bench_cascade.json"
GOAL_POINTS, GOAL_CALLS = 0.1, 0.15
COSTS = {"teacher": 3.0, "student": 0.5}  # dollars per hour, as the shipped configs say


@dataclass(frozen=True)
class Pair:
    name: str  # the gateway's model name
    teacher: Path
    student: Path
    threshold: float  # the cascade's min_confidence (top probability)
    rows: list[dict[str, np.ndarray]]  # the test split, one request's inputs each
    labels: np.ndarray
    extra: dict[str, Any]  # more gateway config (the text pair's warm-up ranges)


def pairs() -> list[Pair]:
    digits = load_test_split(TEST_SPLIT_PATH)
    text = load_text_split(TEXT_TEST_SPLIT_PATH)
    text_rows = []
    for n in range(len(text.y)):
        length = int(text.attention_mask[n].sum())  # each row at its own length
        text_rows.append({"input_ids": text.input_ids[n : n + 1, :length],
                          "attention_mask": text.attention_mask[n : n + 1, :length]})  # fmt: skip
    warm = {"inputs": {"input_ids": {"warmup_range": [0, 31]},
                       "attention_mask": {"warmup_range": [1, 1]}}}  # fmt: skip
    return [
        Pair("digits", TEACHER_PATH, STUDENT_PATH, 0.9,
             [{"pixels": digits.x[n : n + 1]} for n in range(len(digits.y))], digits.y, {}),
        Pair("text", TEXT_TEACHER_PATH, TEXT_STUDENT_PATH, 0.99, text_rows, text.y, warm),
    ]  # fmt: skip


def configs(pair: Pair) -> dict[str, dict[str, Any]]:
    base = {"model": pair.name, "shadow": {"sample_rate": 0.0}, **pair.extra,
            "teacher": {"path": str(pair.teacher), "cost_per_hour": COSTS["teacher"]},
            "student": {"path": str(pair.student), "cost_per_hour": COSTS["student"]}}  # fmt: skip
    cascade = {"mode": "cascade", "cascade": {"min_confidence": pair.threshold}}
    return {
        "teacher alone": {**base, "traffic": {"student_share": 0.0}},
        "student alone": {**base, "traffic": {"student_share": 1.0}},
        f"cascade (top < {pair.threshold:g} escalates)": {
            **base, "traffic": {"student_share": 1.0, **cascade}},
    }  # fmt: skip


def body(inputs: dict[str, np.ndarray]) -> bytes:
    datatypes = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}
    return orjson.dumps({"inputs": [
        {"name": name, "shape": list(a.shape), "datatype": datatypes[a.dtype],
         "data": a.ravel().tolist()} for name, a in inputs.items()]})  # fmt: skip


def random_rows_script(tmp: Path, pair: Pair) -> Path:
    """A wrk script that posts one of the test split's rows at random (seeded) per request."""
    bodies = ["".join(f"\\{byte}" for byte in body(row)) for row in pair.rows]
    script = tmp / f"{pair.name}-rows.lua"
    lua = ["math.randomseed(1)", "bodies = {", *(f'  "{b}",' for b in bodies), "}",
           'wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"',
           "request = function()",
           '  return wrk.format(nil, nil, nil, bodies[math.random(#bodies)])', "end"]  # fmt: skip
    script.write_text("\n".join(lua) + "\n" + REPORT)
    return script


def quality(gateway: Any, pair: Pair) -> tuple[np.ndarray, float]:
    """Every test row alone: the answered classes, and the share escalated."""
    answered, escalated = [], 0
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for row in pair.rows:
            answer = client.post(f"/v2/models/{pair.name}/infer", content=body(row),
                                 headers={"content-type": "application/json"})  # fmt: skip
            answer.raise_for_status()
            answered.append(int(np.argmax(answer.json()["outputs"][0]["data"])))
            escalated += answer.headers.get("x-escalated") == "true"
    return np.asarray(answered), escalated / len(pair.rows)


def costs(gateway: Any) -> tuple[float, float]:
    text = httpx.get(f"{gateway.url}/metrics").text
    return (read_total(text, "gateway_inference_cost_dollars_total"),
            read_total(text, "gateway_requests_total", code="200"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if PINNED:
        os.sched_setaffinity(0, set(os.sched_getaffinity(0)) - {0})
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for pair in pairs():
            servers = {name: PinnedGateway(tmp, config).start()
                       for name, config in configs(pair).items()}  # fmt: skip
            try:
                results[pair.name] = measure(tmp, pair, servers, args.seconds, args.rounds)
            finally:
                for server in servers.values():
                    server.stop()
    goals = report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": platform.machine(), "python": platform.python_version()},
        "note": "same run: compare the ratios, not absolute numbers", "pinned": PINNED,
        "seconds": args.seconds, "rounds": args.rounds, "concurrency": 16, "costs": COSTS,
        "rows": results, "goal_met": goals,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")


def measure(tmp: Path, pair: Pair, servers: dict[str, Any], seconds: float,
            rounds: int) -> dict[str, dict[str, float]]:  # fmt: skip
    answers = {name: quality(server, pair) for name, server in servers.items()}
    teacher_answers = answers["teacher alone"][0]
    script = random_rows_script(tmp, pair)
    infer = f"/v2/models/{pair.name}/infer"
    for server in servers.values():
        wrk(server.port, infer, 16, 1, script)  # warm-up, not reported
    before = {name: costs(server) for name, server in servers.items()}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, server in servers.items():
            runs[name].append(wrk(server.port, infer, 16, seconds, script))
    rows = {}
    for name, server in servers.items():
        spent, served = (a - b for a, b in zip(costs(server), before[name], strict=True))
        classes, escalated = answers[name]
        teacher_calls = {"teacher alone": 1.0, "student alone": 0.0}.get(name, escalated)
        rows[name] = {
            "accuracy": float((classes == pair.labels).mean()),
            "agreement_with_teacher": float((classes == teacher_answers).mean()),
            "escalation_rate": escalated,
            "teacher_calls_per_request": teacher_calls,
            **median_of(runs[name]),
            "dollars_per_1k": 1000.0 * spent / served if served else float("nan"),
        }
    return rows


def report(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, bool]:
    console, goals = Console(), {}
    pinning = "gateways on CPU 0, wrk on CPU 1" if PINNED else "not pinned"
    for pair, rows in results.items():
        table = Table(title=f"{pair}: the test split for quality; wrk c16 for speed ({pinning}; "
                      "medians; 2xx only)")  # fmt: skip
        for column in ("gateway", "accuracy", "agreement", "escalated", "teacher calls", "req/s",
                       "p50 ms", "p99 ms", "non-2xx", "$ / 1k req"):  # fmt: skip
            table.add_column(column, justify="right")
        for name, row in rows.items():
            table.add_row(
                name, f"{row['accuracy']:.2%}", f"{row['agreement_with_teacher']:.2%}",
                f"{row['escalation_rate']:.1%}", f"{row['teacher_calls_per_request']:.3f}",
                f"{row['rps']:.0f}", f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}",
                f"{row['non_2xx_share']:.1%}", f"{row['dollars_per_1k']:.2e}",
            )  # fmt: skip
        console.print(table)
        cascade = next(row for name, row in rows.items() if name.startswith("cascade"))
        teacher = rows["teacher alone"]
        drop = (teacher["accuracy"] - cascade["accuracy"]) * 100.0
        goals[pair] = drop <= GOAL_POINTS and cascade["teacher_calls_per_request"] < GOAL_CALLS
        console.print(f"{pair}: the cascade's accuracy is {drop:+.2f} points below the teacher's "
                      f"at {cascade['teacher_calls_per_request']:.1%} of its calls: goal "
                      f"{'met' if goals[pair] else 'NOT met'}")  # fmt: skip
    return goals


if __name__ == "__main__":
    main()
