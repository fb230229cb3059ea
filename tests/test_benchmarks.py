"""The side-by-side benchmark runs and writes what it promises (no timing is asserted here:
targets live in the benchmark's output, never in a test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.bench_serving import PLAN
from tests.servers import run_benchmark

pytestmark = pytest.mark.e2e


def test_bench_serving_measures_every_server_and_writes_its_ratios(tmp_path: Path) -> None:
    # exit 1 says a gateway row shed more than 1 %: a number for the benchmark's reader (a busy
    # test machine can make it), not this test's verdict
    returncode, result = run_benchmark(
        "bench_serving", tmp_path, "--seconds", "1", "--rounds", "1", ok=(0, 1)
    )
    assert bool(result["shedding_failures"]) == (returncode == 1)
    for name, _, levels in PLAN:
        for level in levels:
            measured = result["rows"]["batch 64" if level == "batch 64" else name]
            if level == "batch 64":
                assert measured["binary_rows_per_s"] > 0 and measured["json_rows_per_s"] > 0
            else:
                assert measured[level]["rps"] > 0 and measured[level]["p99_ms"] > 0, (name, level)
                assert 0 <= measured[level]["non_2xx_share"] <= 1
    assert len(result["ratios"]) == 8 and all(value == value for value in result["ratios"].values())
    budget = result["batched_teacher_c64_cpu_us"]
    assert budget["uvicorn's floor (raw ASGI no-op)"] > 0
    assert budget["the teacher's own time per row (best batch of 8-64)"] > 0


def test_bench_fleet_measures_both_stores_with_every_label_joined(tmp_path: Path) -> None:
    # it fails on any 404 or 5xx
    _, result = run_benchmark("bench_fleet", tmp_path, "--seconds", "1", "--rounds", "1")
    for store in ("memory", "redis"):
        row = result["rows"][store]
        assert row["inferences_per_s"] > 0 and row["cpu_ms_per_inference"] > 0
        # a label after every answer: within one in flight per connection of the inferences
        assert abs(row["labels_per_s"] - row["inferences_per_s"]) <= 16 + 0.01 * row[
            "inferences_per_s"]  # fmt: skip
    assert "redis_throughput_cost (target < 0.10)" in result


def test_bench_isolation_serves_digits_beside_a_hung_model_and_writes_its_ratios(
    tmp_path: Path,
) -> None:
    _, result = run_benchmark("bench_isolation", tmp_path, "--seconds", "1", "--rounds", "1")
    (measured,) = result["rounds"]
    for load in ("alone", "beside_hung", "beside_healthy"):
        assert measured[load]["rps"] > 0 and measured[load]["p99_ms"] > 0
    # the hung model's clients got no answer but errors (its teacher never answers again), and
    # they were really sent
    assert measured["hung"]["requests_per_s"] > 0 and measured["hung"]["non_2xx_share"] == 1.0
    assert measured["healthy"]["non_2xx_share"] < 0.01  # the same paced load, answered
    assert len(result["ratios"]) == 5 and all(value > 0 for value in result["ratios"].values())


def test_gpu_padding_times_every_plan_and_padded_answers_equal_unpadded(tmp_path: Path) -> None:
    """Runs on the CPU here (the committed results are from a lent H200)."""
    _, result = run_benchmark("gpu_padding", tmp_path, "--requests", "24", "--rounds", "1")
    rows = result["rows"]
    assert set(rows) == {"unbatched", "padded to the longest", "length buckets 16/32/64/128"}
    for row in rows.values():
        assert row["requests_per_s"] > 0 and row["max_abs_difference"] < 1e-4
    assert rows["padded to the longest"]["padding_waste"] > rows["length buckets 16/32/64/128"][
        "padding_waste"] > 0  # fmt: skip
