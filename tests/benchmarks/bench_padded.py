"""Benchmark: padded batching of a transformer teacher, in one run beside its references.

The pair: the shipped text pair (``models/text``: a 4-layer, 128-wide transformer teacher and its
distilled student; sequences up to 128 tokens), else a transformer built here
(``tests.model_shapes.write_transformer_classifier``, the same teacher shape, random weights).
Requests are V2 JSON of one row whose length is drawn uniformly from 8-128 (seeded; 256 bodies
that ``wrk`` picks from at random), so no two neighbours need share a length.

- teacher at c64: the gateway without batching, the gateway with padded batching (pad to the
  longest in the batch), and with length buckets (edges 16/32/64/128); the naive handler as the
  floor. Ratios: batched req/s over the unbatched gateway's (target >= 3) and their p99 (target
  <= 1). The padding waste (what padding added over every element of the padded calls) is read
  from the gateways' own metrics.
- student at c16 and c64: the gateway against the naive handler (req/s, p99).

Servers on CPU 0, ``wrk`` on CPU 1, interleaved rounds, medians, ratios per round (as
``bench_serving``); only 2xx answers count. Results: ``tests/benchmarks/results/bench_padded.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import tritonclient.http  # noqa: F401  (the gateway's client extra: fail early when absent)
from rich.console import Console
from rich.table import Table

from controller.local.processes import ManagedProcess, free_port
from models import MODELS_DIR
from tests import model_shapes
from tests.benchmarks.bench_protocols import PINNED, PinnedGateway, median_of
from tests.benchmarks.bench_serving import REPORT, wrk
from tests.servers import read_metric

RESULTS = Path(__file__).parent / "results" / "bench_padded.json"
LENGTHS = (8, 128)
BODIES = 256
VOCAB = 1000
SHIPPED_VOCAB = 32  # models/text/data.py: VOCAB_SIZE
BUCKETS = [16, 32, 64, 128]
BATCHING = {"max_batch_size": 16, "max_delay_us": 2000}
"""16 rows: a padded call of 64 rows of ~120 tokens runs longer than the queue target (100 ms) on
one core, so it could only be shed."""


class NaiveTextServer(ManagedProcess):
    """``naive_text_handler.py`` under uvicorn, pinned like the gateway."""

    name = "naive text handler"

    def __init__(self, work_dir: Path, model: Path) -> None:
        self.port = free_port()
        self.model = model
        self.log_path = work_dir / f"naive-text-{self.port}.log"

    def command(self) -> list[str]:
        pin = ["taskset", "-c", "0"] if PINNED else []
        return [*pin, sys.executable, "-m", "uvicorn",
                "tests.benchmarks.naive_text_handler:app", "--port", str(self.port),
                "--log-level", "warning", "--no-access-log"]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return {**os.environ, "NAIVE_MODEL": str(self.model)}

    def is_ready(self) -> bool:
        return httpx.get(f"http://127.0.0.1:{self.port}/openapi.json").status_code == 200


def text_pair(tmp: Path) -> tuple[Path, Path, int, str]:
    """The shipped text pair (``models/text``, ``distill-models``), else a transformer built
    here; its vocabulary size; and which it is."""
    shipped = MODELS_DIR / "text"
    if (shipped / "teacher.onnx").is_file() and (shipped / "student.onnx").is_file():
        return (
            shipped / "teacher.onnx",
            shipped / "student.onnx",
            SHIPPED_VOCAB,
            "shipped text pair",
        )
    teacher = model_shapes.write_transformer_classifier(tmp / "teacher.onnx", vocab=VOCAB)
    student = model_shapes.write_transformer_classifier(
        tmp / "student.onnx", layers=1, width=32, heads=2, vocab=VOCAB, seed=1
    )
    return teacher, student, VOCAB, "built in tests: 4 x 128 teacher, 1 x 32 student"


def random_bodies_script(tmp: Path, lengths: list[int], vocab: int) -> Path:
    """A wrk script that posts one of the bodies at random (seeded) per request."""
    rng = np.random.default_rng(0)
    bodies = []
    for length in lengths:
        rows = model_shapes.text_rows(rng, [length], vocab=vocab)
        body = orjson.dumps({"inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.ravel().tolist()}
            for n, a in rows.items()]})  # fmt: skip
        bodies.append("".join(f"\\{byte}" for byte in body))
    script = tmp / "random-lengths.lua"
    lua = ["math.randomseed(1)", "bodies = {", *(f'  "{b}",' for b in bodies), "}",
           'wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"',
           "request = function()",
           '  return wrk.format(nil, nil, nil, bodies[math.random(#bodies)])', "end"]  # fmt: skip
    script.write_text("\n".join(lua) + "\n" + REPORT)
    return script


PLAN = (
    ("naive teacher", ("c64",)),
    ("gateway teacher", ("c64",)),
    ("gateway teacher, padded", ("c64",)),
    ("gateway teacher, buckets", ("c64",)),
    ("naive student", ("c16", "c64")),
    ("gateway student", ("c16", "c64")),
)


def gateways(teacher: Path, student: Path) -> dict[str, dict[str, Any]]:
    both = {
        "student": {"path": str(student)},
        "shadow": {"sample_rate": 0.0},
        "inputs": {"input_ids": {"max_shape": [-1, LENGTHS[1]]}},
    }  # padding needs a maximum
    pad = {**BATCHING, "pad": True}
    return {
        "gateway teacher": {**both, "teacher": {"path": str(teacher)}},
        "gateway teacher, padded": {**both, "teacher": {"path": str(teacher),
                                                        "batching": pad}},
        "gateway teacher, buckets": {**both, "teacher": {"path": str(teacher), "batching": {
            **pad, "length_buckets": BUCKETS}}},
        "gateway student": {**both, "teacher": {"path": str(teacher)},
                            "traffic": {"student_share": 1.0}},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    lengths = np.random.default_rng(2).integers(LENGTHS[0], LENGTHS[1] + 1, BODIES).tolist()
    servers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        teacher, student, vocab, pair = text_pair(tmp)
        script = random_bodies_script(tmp, lengths, vocab)
        try:
            servers["naive teacher"] = NaiveTextServer(tmp, teacher).start()
            servers["naive student"] = NaiveTextServer(tmp, student).start()
            for name, config in gateways(teacher, student).items():
                servers[name] = PinnedGateway(tmp, config).start()
            infer = "/v2/models/digits/infer"
            for name, _ in PLAN:
                wrk(servers[name].port, infer, 16, 1, script)  # warm-up, not reported
            padded = [name for name in servers if "," in name]
            before = {name: _padding_counts(servers[name]) for name in padded}
            runs: dict[str, dict[str, list[dict[str, float]]]] = {}
            for _ in range(args.rounds):
                for name, levels in PLAN:
                    for level in levels:
                        got = wrk(servers[name].port, infer, int(level[1:]), args.seconds, script)
                        runs.setdefault(name, {}).setdefault(level, []).append(got)
            waste = {name: _waste_since(servers[name], before[name]) for name in padded}
        finally:
            for server in servers.values():
                server.stop()
    rows = {name: {level: median_of(m) for level, m in levels.items()}
            for name, levels in runs.items()}  # fmt: skip
    per_round = [_ratios({n: {lv: m[r] for lv, m in ls.items()} for n, ls in runs.items()})
                 for r in range(args.rounds)]  # fmt: skip
    ratios = {key: statistics.median(each[key] for each in per_round) for key in per_round[0]}
    # a round whose side served nothing gives NaN, which median() may sort anywhere: say so
    ratios = {key: (value if all(each[key] == each[key] for each in per_round) else float("nan"))
              for key, value in ratios.items()}  # fmt: skip
    _print(rows, ratios, waste, pair, args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": platform.machine(), "python": platform.python_version()},
        "note": "same run: compare the ratios, not absolute numbers", "pair": pair,
        "lengths": list(LENGTHS), "buckets": BUCKETS, "batching": BATCHING, "pinned": PINNED,
        "seconds": args.seconds, "rounds": args.rounds, "rows": rows, "ratios": ratios,
        "ratios_by_round": per_round, "padding_waste": waste,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")


def _padding_counts(server: Any) -> tuple[float, float]:
    """The teacher's padding elements and padded-call elements so far, from the gateway."""
    text = httpx.get(f"{server.url}/metrics").text
    added = read_metric(text, "gateway_batch_padding_elements_total", backend="teacher")
    return added, read_metric(text, "gateway_batch_padded_call_elements_total", backend="teacher")


def _waste_since(server: Any, before: tuple[float, float]) -> float:
    """The share of the padded calls' input elements that padding added since ``before``."""
    added, total = _padding_counts(server)
    spent = total - before[1]
    return (added - before[0]) / spent if spent else float("nan")


def _over(a: float, b: float) -> float:
    return a / b if b else float("nan")  # a side that served nothing in a round: no ratio


def _ratios(rows: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    gt = rows["gateway teacher"]["c64"]
    padded = rows["gateway teacher, padded"]["c64"]
    buckets = rows["gateway teacher, buckets"]["c64"]
    ns, gs = rows["naive student"], rows["gateway student"]
    return {
        "padded teacher c64 rps / unbatched gateway (target >= 3)":
            _over(padded["rps"], gt["rps"]),
        "padded teacher c64 p99 / unbatched gateway (target <= 1)":
            _over(padded["p99_ms"], gt["p99_ms"]),
        "bucketed teacher c64 rps / unbatched gateway (target >= 3)":
            _over(buckets["rps"], gt["rps"]),
        "bucketed teacher c64 p99 / unbatched gateway (target <= 1)":
            _over(buckets["p99_ms"], gt["p99_ms"]),
        "unbatched gateway teacher c64 rps / naive":
            _over(gt["rps"], rows["naive teacher"]["c64"]["rps"]),
        "student c16 rps / naive": _over(gs["c16"]["rps"], ns["c16"]["rps"]),
        "student c16 p99 / naive": _over(gs["c16"]["p99_ms"], ns["c16"]["p99_ms"]),
        "student c64 rps / naive": _over(gs["c64"]["rps"], ns["c64"]["rps"]),
        "student c64 p99 / naive": _over(gs["c64"]["p99_ms"], ns["c64"]["p99_ms"]),
    }  # fmt: skip


def _print(rows: dict[str, dict[str, dict[str, float]]], ratios: dict[str, float],
           waste: dict[str, float], pair: str, seconds: float) -> None:  # fmt: skip
    pinning = "servers on CPU 0, wrk on CPU 1" if PINNED else "not pinned"
    table = Table(title=f"transformer pair ({pair}); one row of length 8-128 a request, V2 JSON; "
                  f"medians of wrk runs of {seconds:g} s ({pinning}; ms; 2xx only)")  # fmt: skip
    for column in ("server", "level", "req/s", "p50", "p99", "non-2xx", "padding waste"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for name, levels in rows.items():
        for level, got in levels.items():
            share = waste.get(name)
            table.add_row(name, level, f"{got['rps']:.0f}", f"{got['p50_ms']:.2f}",
                          f"{got['p99_ms']:.2f}", f"{got['non_2xx_share']:.1%}",
                          f"{share:.1%}" if share is not None else "")  # fmt: skip
    console = Console(width=150)
    console.print(table)
    console.print("ratios (median of each round's ratio):")
    for name, value in ratios.items():
        console.print(f"  {name}: {value:.3f}")


if __name__ == "__main__":
    main()
