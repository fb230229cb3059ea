"""Policy files: defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.policy import PolicyError, load_policy

POLICIES = Path(__file__).resolve().parents[2] / "controller" / "policies"


@pytest.mark.parametrize("name", ["demo.yaml", "production.yaml", "gated.yaml"])
def test_shipped_policies_are_valid(name: str) -> None:
    policy = load_policy(POLICIES / name)
    assert policy.steps[-1] == 100


def test_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("gates: {min_agreement: 0.95}\n")
    policy = load_policy(path)
    assert policy.steps == [5, 25, 100]
    assert policy.confidence == 0.95 and policy.failure_limit == 2


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("steps: [5, 25, 90]\ngates: {min_agreement: 0.9}\n", "steps: the last step must be 100"),
        ("steps: [25, 5, 100]\ngates: {min_agreement: 0.9}\n", "steps: steps must rise strictly"),
        ("steps: [5, 200]\ngates: {min_agreement: 0.9}\n", "steps: each step is a percentage"),
        ("steps: []\ngates: {min_agreement: 0.9}\n", "steps: needs at least one step"),
        ("gates: {min_agreemnt: 0.9}\n", "gates.min_agreemnt: Extra inputs are not permitted"),
        ("gates: {min_agreement: 1.5}\n", "gates.min_agreement: Input should be less than"),
        ("gates: {}\n", "gates: set at least one gate"),
        ("bake_seconds: -1\ngates: {max_kl: 1}\n", "bake_seconds: Input should be greater"),
        ("bake_seconds: 100\nmax_step_seconds: 50\ngates: {max_kl: 1}\n", "max_step_seconds"),
        ("failure_limit: 0\ngates: {max_kl: 1}\n", "failure_limit"),
        ("confidence: 1.2\ngates: {max_kl: 1}\n", "confidence"),
        ("interval: 5\ngates: {max_kl: 1}\n", "interval: Extra inputs are not permitted"),
        ("steps: [0, 100]\ngates: {max_error_rate: 0.01}\n", "dark-launch"),
        ("[1, 2]\n", "top level must be a mapping"),
        ("steps: [1,\n", "not valid YAML at line 2, column 1"),
        ("gates: {max_p99_ms: 50}\n", "gates: max_p99_ms is now max_latency_ms"),
        ("manual_approval: [rollout]\ngates: {max_kl: 1}\n", "manual_approval: rollout is not"),
        ("notify: [{url: ftp://x}]\ngates: {max_kl: 1}\n", "notify.0.url: String should match"),
        (
            "notify: [{url: 'http://a/1'}, {url: 'http://a/2'}]\ngates: {max_kl: 1}\n",
            "notify: names must differ (a repeats)",
        ),
        ("notify: [{url: 'http://a', format: teams}]\ngates: {max_kl: 1}\n", "notify.0.format"),
        (
            "webhooks: [{name: g, type: event, url: 'http://a'}]\ngates: {max_kl: 1}\n",
            "webhooks.0.type",
        ),
    ],
)
def test_bad_policies_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=None) as caught:
        load_policy(path)
    assert named in str(caught.value)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "nope.yaml")
