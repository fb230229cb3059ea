"""``bench_padded`` runs and writes what it promises (no timing is asserted: targets live in the
benchmark's output, never in a test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.bench_padded import PLAN
from tests.servers import run_benchmark

pytestmark = pytest.mark.e2e


def test_bench_padded_measures_every_server_and_the_padding_waste(tmp_path: Path) -> None:
    _, result = run_benchmark("bench_padded", tmp_path, "--seconds", "1", "--rounds", "1")
    for name, levels in PLAN:
        for level in levels:
            measured = result["rows"][name][level]
            assert measured["p99_ms"] > 0 and 0 <= measured["non_2xx_share"] <= 1, (name, level)
    assert result["rows"]["gateway student"]["c16"]["rps"] > 0
    # the padded gateways report their waste: a share of their calls' elements
    waste = result["padding_waste"]
    assert 0 < waste["gateway teacher, buckets"] < 1 and 0 < waste["gateway teacher, padded"] < 1
    assert len(result["ratios"]) == 9
