"""The policy's ``watch:`` section: defaults, and errors that name the key."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.policy import Policy


def _policy(watch: dict[str, Any], task: str = "classification") -> Policy:
    gates = {"min_agreement": 0.9} if task == "classification" else {"max_mean_abs_error": 1.0}
    return Policy.model_validate({"task": task, "gates": gates, "watch": watch})


def test_defaults_judge_input_and_prediction_drift_and_alert() -> None:
    watch = _policy({}).watch
    assert watch is not None
    assert (watch.max_input_psi, watch.max_prediction_psi, watch.on_breach) == (0.25, 0.25, "alert")
    assert Policy.model_validate({"gates": {"min_agreement": 0.9}}).watch is None


@pytest.mark.parametrize(("watch", "task", "message"), [
    ({"gates": {"min_agreement": 2}}, "classification", "watch.gates: min_agreement"),
    ({"gates": {"max_nonsense": 1}}, "classification", "watch.gates: max_nonsense"),
    ({"gates": {"min_agreement": 0.9}}, "regression", "watch.gates: min_agreement do not fit"),
    ({"max_estimated_accuracy_drop": 0.05}, "regression", "classification only"),
    ({"max_input_psi": None, "max_prediction_psi": None}, "classification", "at least one check"),
    ({"on_breach": "pause"}, "classification", "on_breach"),
    ({"shadow_sample_rate": 1.5}, "classification", "shadow_sample_rate"),
    ({"reference": "file"}, "classification", "reference"),
    ({"false_alarms_per_day": 12}, "classification", "false_alarms_per_day 12 gives each 3600 s"),
])  # fmt: skip
def test_a_bad_watch_section_names_its_key(watch: dict[str, Any], task: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _policy(watch, task)
