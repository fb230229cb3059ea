"""Two minutes of the soak (tests/soak.py; `make soak` runs 30): mixed traffic with unique ids,
feedback, shadow comparisons and share changes, and nothing grows once the stores are full."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak import FEEDBACK_TTL_S, soak

pytestmark = pytest.mark.e2e

WARM_UP_S = 45.0  # the feedback TTL (20 s) twice over, and the allocator's first growth


def test_two_minutes_of_mixed_traffic_leave_memory_flat(tmp_path: Path) -> None:
    windows = soak(120.0, 15.0, tmp_path)
    assert sum(w.requests for w in windows) > 5_000
    assert sum(w.errors for w in windows) == 0
    steady = [w for w in windows if w.ended_at_s > WARM_UP_S]
    assert len(steady) >= 4
    # Unique ids leaking from the feedback store would add about 16 MiB a minute at this rate.
    growth = steady[-1].rss_mib - steady[0].rss_mib
    assert growth < 8.0, [w.rss_mib for w in windows]
    assert max(w.open_fds for w in windows) - min(w.open_fds for w in windows) <= 2
    rate = max(w.requests for w in windows) / 15.0
    assert max(w.feedback_pending for w in steady) <= 1.5 * rate * FEEDBACK_TTL_S  # the TTL holds
