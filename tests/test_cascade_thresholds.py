"""The cascade's threshold selection (``gateway.thresholds``) as pure logic: the binomial test
and bound against scipy, fixed-sequence testing from the top, the looks, and by simulation how
often a chosen threshold breaks its bound against the stated confidence."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from scipy import stats

from controller.rollout_store import RolloutState
from controller.status import _gateways
from gateway.cascade_config import CascadeConfig
from gateway.thresholds import (
    ThresholdSelector,
    binomial_cdf,
    fixed_sequence,
    grid,
    look_delta,
    upper_bound,
)
from tests.cascade_simulation import simulate


@pytest.mark.parametrize(("x", "n", "p"), [(0, 1500, 0.002), (3, 1500, 0.002), (40, 10_000, 0.003),
                                           (7, 50, 0.3), (0, 1, 0.5)])  # fmt: skip
def test_the_binomial_tail_and_bound_equal_scipys(x: int, n: int, p: float) -> None:
    assert binomial_cdf(x, n, p) == pytest.approx(stats.binom.cdf(x, n, p), rel=1e-9)
    # Clopper-Pearson's one-sided upper bound is the beta quantile
    assert upper_bound(x, n, 0.05) == pytest.approx(stats.beta.ppf(0.95, x + 1, n - x), rel=1e-6)


def test_fixed_sequence_takes_the_lowest_threshold_shown_safe_and_stops_at_the_first_not() -> None:
    # thresholds 0, 0.5, 1.0 (rising); wrong answers at or above each
    n = 3000
    assert fixed_sequence([30, 0, 0], n, 0.002, 0.05) == 1  # 0 wrong of 3000: below 0.002
    assert fixed_sequence([0, 0, 0], n, 0.002, 0.05) == 0
    assert fixed_sequence([0, 0, 9], n, 0.002, 0.05) is None  # the top fails: nothing further
    # a lower one that would pass is never reached past a failure
    assert fixed_sequence([0, 9, 0], n, 0.002, 0.05) == 2


def test_looks_spend_delta_so_that_all_of_them_together_spend_at_most_delta() -> None:
    assert sum(look_delta(k, 0.05) for k in range(10_000)) == pytest.approx(0.05, rel=1e-3)
    assert grid(0.25) == [0.0, 0.25, 0.5, 0.75, 1.0] and grid(0.01)[-1] == 1.0


def test_the_selector_chooses_at_each_doubling_and_reports_its_evidence() -> None:
    selector = ThresholdSelector(0.002, 0.95, 0.1, min_samples=1000)
    rng = np.random.default_rng(3)
    looks = []
    for n in range(1, 4001):
        confidence = float(rng.uniform(0.3, 1.0))
        agreed = confidence >= 0.6 or rng.random() < 0.5  # below 0.6: half disagree
        choice = selector.observe(confidence, agreed)
        if choice is not None:
            looks.append(n)
    assert looks == [1000, 2000, 4000]
    choice = selector.choice
    assert choice is not None and choice.threshold == pytest.approx(0.6)
    assert choice.disagreements == 0 and choice.samples == 4000 and choice.look == 2
    # 0 of 4000 at delta 0.05 / 12: the Clopper-Pearson bound, beside the measured escalation
    assert choice.upper_bound == pytest.approx(stats.beta.ppf(1 - 0.05 / 12, 1, 4000), rel=1e-6)
    assert choice.escalation_rate == pytest.approx(0.3 / 0.7, abs=0.03)


def test_a_look_at_ten_million_evidence_rows_takes_milliseconds() -> None:
    """A look runs on the event loop: summing the binomial's terms took 1.3 s per bound at
    n = 10 M (every request in flight frozen); the incomplete beta is O(1) at any n."""
    selector = ThresholdSelector(0.002, 0.95, 0.01, min_samples=10_000_000)
    rng = np.random.default_rng(7)
    cells = rng.multinomial(10_000_000 - 1, np.full(len(selector.grid), 1 / len(selector.grid)))
    selector._cells = [int(c) for c in cells]
    # 1 % wrong below 0.5, none above: the bound is near 0.002 where x is in the tens of thousands
    below = np.asarray(selector.grid) < 0.5
    selector._wrong_cells = [
        int(c) // 100 if low else 0 for c, low in zip(cells, below, strict=True)
    ]
    selector.samples = 10_000_000 - 1
    started = time.perf_counter()
    choice = selector.observe(0.99, True)  # the 10,000,000th row completes look 0
    elapsed = time.perf_counter() - started
    assert choice is not None and choice.samples == 10_000_000
    assert choice.threshold is not None and 0.3 < choice.threshold <= 0.5
    assert choice.upper_bound == pytest.approx(
        stats.beta.ppf(1 - 0.05 / 2, choice.disagreements + 1, 10_000_000 - choice.disagreements),
        rel=1e-6)  # fmt: skip
    assert elapsed < 0.05, f"a look took {elapsed * 1000:.1f} ms"


def test_a_cascade_needs_a_threshold_or_a_bound() -> None:
    with pytest.raises(ValueError, match="min_confidence or max_disagreement"):
        CascadeConfig()


def test_the_chosen_threshold_holds_its_bound_far_more_often_than_the_confidence_asks() -> None:
    outcome = simulate(runs=150, seed=5)
    assert outcome.violated / outcome.runs <= 0.05  # the guarantee (measured 0 of 2,000 runs)
    assert outcome.plug_in_violated / outcome.runs > 0.5  # the check can see a violation
    assert np.median(outcome.final_thresholds) <= outcome.best + 0.1  # and is not useless


def test_dropped_shadow_calls_leave_the_guarantee_when_they_drop_every_path_alike() -> None:
    """Half or four fifths of the shadow calls dropped, sure and escalated requests alike: the
    evidence is still a random sample, so the bound still holds; none answering: no choice."""
    for keep in (0.5, 0.2):
        outcome = simulate(runs=150, seed=5, keep=keep, policy="path_independent")
        assert outcome.violated / outcome.runs <= 0.05
        assert np.median(outcome.final_thresholds) <= outcome.best + 0.1
    assert set(simulate(runs=20, seed=5, keep=0.0).final_thresholds) == {1.0}
    # escalated rows kept whatever happens: evidence from them alone still chooses (and lower)
    biased = simulate(runs=150, seed=5, keep=0.0, policy="escalated_always")
    assert np.median(biased.final_thresholds) < 1.0


def test_distill_canary_status_says_a_gateway_is_in_cascade_mode() -> None:
    """What `distill-canary status` prints of a gateway's traffic JSON (the HTTP seam faked)."""
    evidence = {"samples": 1600, "upper_bound": 0.0093}
    cascade = {"threshold": 0.87, "source": "chosen", "confidence_level": 0.95,
               "max_disagreement": 0.01, "evidence": evidence}  # fmt: skip
    answers = {"http://a": {"student_share": 0.25, "generation": 3, "mode": "cascade",
                            "cascade": cascade},
               "http://b": {"student_share": 0.25, "generation": 3}}  # fmt: skip

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[f"http://{request.url.host}"])

    rollout = RolloutState(share=0.25, gateways=list(answers),
                           generations={"http://a": 3, "http://b": 3})  # fmt: skip
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        lines = _gateways(rollout, client)
    assert lines == [
        "http://a: intended 25% (generation 3), actual 25% (generation 3) ok",
        "  cascade escalates below 0.87 (chosen from 1,600 shadowed requests: disagreement <= "
        "0.01 at 95%; this look's bound 0.0093)",
        "http://b: intended 25% (generation 3), actual 25% (generation 3) ok",
    ]  # one gateway in cascade mode: no fleet line
