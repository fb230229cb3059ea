"""The error rate's one definition, as the controller counts it from a window's counters: calls
routed to a backend that failed (answered 5xx, or fallen back away from it) over the calls routed
to it. The same table of terms is the PromQL of the recording rule and the dashboard
(tests/test_deploy.py), whose promtool tests run the same cases."""

from __future__ import annotations

import pytest

from controller import error_rate
from controller.promtext import Snapshot
from controller.sources import window_metrics


def counters(**series: float) -> Snapshot:
    """``backend_code`` -> answered requests, ``from_reason`` -> fallbacks away from ``from``."""
    snapshot: Snapshot = {}
    for name, value in series.items():
        first, second = name.split("_")
        if second.isdigit():
            labels = {"model": "digits", "backend": first, "code": second, "protocol": "http"}
            snapshot[("gateway_requests_total", tuple(sorted(labels.items())))] = value
        else:
            labels = {"model": "digits", "from_backend": first, "to_backend": "teacher",
                      "reason": second}  # fmt: skip
            snapshot[("gateway_fallbacks_total", tuple(sorted(labels.items())))] = value
    return snapshot


@pytest.mark.parametrize(("series", "routed", "failed"), [
    # every student call fell back: the teacher answered them all, the student served nothing
    ({"teacher_200": 1000, "student_error": 40, "student_timeout": 10}, 50, 50),
    ({"student_200": 50, "student_timeout": 50, "teacher_200": 50}, 100, 50),  # half and half
    ({"student_200": 95, "student_500": 5}, 100, 5),  # answered 5xx
    ({"student_200": 90, "student_400": 10}, 100, 0),  # a client's 4xx is not the student's
])  # fmt: skip
def test_the_student_error_rate_counts_fallbacks_as_failed_calls_routed_to_it(
    series: dict[str, float], routed: float, failed: float
) -> None:
    increase = counters(**series)
    assert error_rate.count(error_rate.ROUTED, increase, "digits", "student") == routed
    assert error_rate.count(error_rate.FAILED, increase, "digits", "student") == failed
    window = window_metrics(increase, "digits").student
    assert (window.requests, window.errors) == (routed, failed)
    teacher = window_metrics(increase, "digits").teacher
    assert teacher.errors == 0  # the teacher answered the fallbacks: not its failures
