"""``bench_padded`` runs and writes what it promises (no timing is asserted: targets live in the
benchmark's output, never in a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.bench_padded import PLAN

pytestmark = pytest.mark.e2e


def test_bench_padded_measures_every_server_and_the_padding_waste(tmp_path: Path) -> None:
    out = tmp_path / "bench_padded.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.bench_padded", "--seconds", "1",
         "--rounds", "1", "--out", str(out)], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    for name, levels in PLAN:
        for level in levels:
            measured = result["rows"][name][level]
            assert measured["p99_ms"] > 0 and 0 <= measured["non_2xx_share"] <= 1, (name, level)
    assert result["rows"]["gateway student"]["c16"]["rps"] > 0
    # the padded gateways report their waste: a share of their calls' elements
    waste = result["padding_waste"]
    assert 0 < waste["gateway teacher, buckets"] < 1 and 0 < waste["gateway teacher, padded"] < 1
    assert len(result["ratios"]) == 9
