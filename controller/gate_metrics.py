"""The gate metrics' contract, written once: the exporter sets them, the dashboard plots them,
the tests read them.

Every analysis sets, per judged gate (dry-run gates included, skipped ones left out):
``canary_gate_value{model, gate, bound}`` (``bound`` one of ``BOUNDS``: the interval's ends and
the point estimate), ``canary_gate_threshold{model, gate}``, ``canary_gate_verdict{model, gate}``
(``VERDICT_VALUES``) and ``canary_gate_dry_run{model, gate}`` (1 for a gate that never decides).
"""

from __future__ import annotations

GATE_VALUE = "canary_gate_value"
GATE_THRESHOLD = "canary_gate_threshold"
GATE_VERDICT = "canary_gate_verdict"
GATE_DRY_RUN = "canary_gate_dry_run"
BOUND_LABEL = "bound"
BOUNDS = ("lower", "estimate", "upper")
VERDICT_VALUES = {"pass": 1.0, "inconclusive": 0.0, "fail": -1.0}
"""``canary_gate_verdict``: 1 pass, 0 inconclusive, -1 fail."""
