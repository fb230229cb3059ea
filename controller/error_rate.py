"""The one definition of a backend's error rate, which the controller's gate, the recording rule
(and so the alert) and the dashboard all use: of the calls routed to a backend, the share that
failed. A call routed to a backend failed when the backend answered it with a 5xx, or when it
fell back away from the backend to the other one (an error, a timeout, an open circuit, a model
not loaded: the client never saw it, but the backend did not serve it). A student whose every
call falls back is 100 % errors, never 0 %.

One table of terms, read two ways: ``count`` sums a window's counter increases (the controller's
``sources.base.window_metrics``), ``promql`` writes the same sum as PromQL (the rule
``model_backend:gateway_error_ratio:rate5m`` in deploy/prometheus/rules/recording.yml and
grafana/build_dashboard.py's error panel; tests/test_deploy.py checks that both hold it).
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.promtext import Snapshot, select, select_codes
from gateway import metric_names as names


@dataclass(frozen=True)
class Term:
    """One counter's part: its series for ``backend`` are those whose ``backend_label`` names it."""

    counter: str
    backend_label: str
    server_errors_only: bool = False  # only codes 5xx: a client's 4xx is not the backend's fault


ROUTED = (Term(names.REQUESTS, "backend"), Term(names.FALLBACKS, "from_backend"),
          Term(names.CASCADE_ESCALATION_CALLS, "backend"))  # fmt: skip
"""Calls routed to a backend: those it answered, those that fell back away from it, and a
cascade's escalations to the teacher (the request is the cascade lane's; its teacher call is the
teacher's)."""
FAILED = (Term(names.REQUESTS, "backend", server_errors_only=True),
          Term(names.FALLBACKS, "from_backend"),
          Term(names.CASCADE_ESCALATION_CALLS, "backend", server_errors_only=True))  # fmt: skip
"""Of those, the ones that failed: answered with a 5xx, fallen back away from it, or an
escalation the teacher failed (its 503/504)."""


def count(terms: tuple[Term, ...], increase: Snapshot, model: str, backend: str) -> float:
    """A window's calls for ``backend``, from counter increases."""
    total = 0.0
    for term in terms:
        labels = {"model": model, term.backend_label: backend}
        if term.server_errors_only:
            total += select_codes(increase, term.counter, "5", **labels)
        else:
            total += select(increase, term.counter, **labels)
    return total


def promql(
    terms: tuple[Term, ...], window: str, matchers: str = "", by: str = "model, backend"
) -> str:
    """The terms' rate per ``by`` over ``window``, as one PromQL sum. The counters' series never
    share a label set (a fallback has ``from_backend``, an answer ``code``), so ``or`` joins
    them all and ``sum`` adds them; ``label_replace`` names a fallback's backend ``backend``."""
    parts = []
    for term in terms:
        selector = [matchers] if matchers else []
        if term.backend_label == "backend":
            selector.append('backend!="none"')  # refused before routing: no backend's call
        if term.server_errors_only:
            selector.append('code=~"5.."')
        series = f"{term.counter}{{{','.join(selector)}}}" if selector else term.counter
        rate = f"rate({series}[{window}])"
        if term.backend_label != "backend":
            rate = f'label_replace({rate}, "backend", "$1", "{term.backend_label}", "(.+)")'
        parts.append(rate)
    return f"sum by ({by}) ({' or '.join(parts)})"


def error_ratio(window: str, matchers: str = "", by: str = "model, backend") -> str:
    """Failed over routed calls per ``by``. ``or ... * 0``: a backend with calls and no failure
    at all is 0, not "no data"."""
    routed = promql(ROUTED, window, matchers, by)
    failed = promql(FAILED, window, matchers, by)
    return f"({failed} or {routed} * 0) / {routed}"
