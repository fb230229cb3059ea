"""Confidence sequences: checked against their definition (the mixture martingale reaches 1/alpha
exactly on the boundary) and by brute-force Monte Carlo of their coverage at every look."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import norm

from controller import sequences, stats

LOOKS = np.arange(40, 6001, 40)  # every 40 samples, up to 6,000: 150 looks per path
PATHS = 1000
# Three standard errors of a Monte Carlo rate of 0.05 over PATHS paths.
MC_SLACK = 3 * math.sqrt(0.05 * 0.95 / PATHS)


@pytest.mark.parametrize("n", [10, 500, 2000, 40_000])
def test_the_boundary_is_where_the_normal_mixture_martingale_reaches_one_over_alpha(n: int) -> None:
    """Robbins' mixture: integral of exp(l S - l^2 n / 2) over l ~ N(0, 1/rho) is 1/alpha at
    S = z sqrt(n) (Howard et al. 2021, eq. (14)), computed here by quadrature."""
    alpha, n_star = 0.05, 2000.0
    rho = sequences.tuned_rho(alpha, n_star)
    s = sequences.mixture_z(n, alpha, n_star) * math.sqrt(n)
    sd = 1.0 / math.sqrt(rho)
    value, _ = quad(lambda lam: math.exp(lam * s - lam * lam * n / 2) * norm.pdf(lam, 0, sd),
                    -20 * sd, 20 * sd, points=[s / n])  # fmt: skip
    assert value == pytest.approx(1.0 / alpha, rel=1e-6)


def test_the_sequence_is_tightest_near_n_star_and_wider_than_one_look() -> None:
    zs = {n: sequences.mixture_z(n, 0.05, 2000) for n in (200, 2000, 20_000)}
    assert zs[2000] < zs[200] and zs[2000] < zs[20_000]
    assert 2.9 < zs[2000] < 3.2  # 1.96 would hold at one look only


def _wilson_bounds(successes: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    low = np.empty(successes.shape)
    high = np.empty(successes.shape)
    for path in range(successes.shape[0]):
        for look, n in enumerate(LOOKS):
            low[path, look], high[path, look] = sequences.proportion(
                float(successes[path, look]), float(n), alpha, 500.0
            )
    return low, high


@pytest.mark.parametrize("p", [0.002, 0.03, 0.5])
def test_a_proportions_sequence_misses_its_truth_at_any_look_at_most_alpha(p: float) -> None:
    """Brute force: 1,000 Bernoulli paths, the interval at each of 150 looks; a path counts once
    if any look's interval misses p. Fixed-confidence Wilson (z 1.96) misses far more."""
    rng = np.random.default_rng(7)
    draws = rng.random((PATHS, int(LOOKS[-1]))) < p
    successes = np.cumsum(draws, axis=1)[:, LOOKS - 1]
    low, high = _wilson_bounds(successes, 0.05)
    missed = ((low > p) | (high < p)).any(axis=1).mean()
    assert missed <= 0.05 + MC_SLACK
    if p == 0.5:  # at one look 5 %; at some look of 150 far more
        n = LOOKS.astype(float)
        phat = successes / n
        fixed_miss = (np.abs(phat - p) > 1.96 * math.sqrt(p * (1 - p)) / np.sqrt(n)).any(axis=1)
        assert fixed_miss.mean() > 0.2


def test_the_bounded_mean_sequence_covers_values_that_are_not_zero_or_one() -> None:
    """Uniform values on [-1, 3] (mean 1): the sequence from the sum and count alone."""
    rng = np.random.default_rng(3)
    values = rng.uniform(-1.0, 3.0, (400, 2000))
    totals = np.cumsum(values, axis=1)
    missed = 0
    for path in range(400):
        for n in range(50, 2001, 50):
            low, high = sequences.bounded_mean(totals[path, n - 1], n, -1.0, 3.0, 0.05, 500.0)
            if not low <= 1.0 <= high:
                missed += 1
                break
    assert missed / 400 <= 0.05
    low, high = sequences.bounded_mean(1000.0, 1000, -1.0, 3.0, 0.05, 500.0)
    assert -1.0 < low < 1.0 < high < 3.0


@pytest.mark.parametrize("p", [0.001])
def test_the_rate_sequence_passes_a_true_rate_below_its_bound_at_most_alpha(p: float) -> None:
    """A wrong pass of an error-rate gate at its threshold: the upper bound below the true rate
    at some look. Exact by Ville's inequality; measured here."""
    rng = np.random.default_rng(11)
    looks = np.arange(400, 12_001, 400)
    errors = np.cumsum(rng.random((500, int(looks[-1]))) < p, axis=1)[:, looks - 1]
    missed = 0
    for path in range(500):
        for look, n in enumerate(looks):
            if sequences.rate_upper(float(errors[path, look]), float(n), 0.05, p / 2) < p:
                missed += 1
                break
    assert missed / 500 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 500)


def test_the_rate_sequence_clears_a_threshold_about_as_soon_as_one_look_did() -> None:
    """No errors at all: 1.96 cleared 0.001 at 3,838 requests; the sequence by about 3,950."""
    assert sequences.rate_upper(0, 3900, 0.05, 0.0005) > 0.001
    assert sequences.rate_upper(0, 4000, 0.05, 0.0005) < 0.001
    assert sequences.rate_upper(10, 4000, 0.05, 0.0005) > 0.0025  # errors move it up
    assert sequences.rate_upper(80, 80, 0.05, 0.025) == 1.0  # every request failed
    assert sequences.rate_upper(80.5, 80, 0.05, 0.025) == 1.0  # PromQL's extrapolation
    assert 0.0 < sequences.rate_upper(79, 80, 0.05, 0.025) < 1.0


def test_bounded_mean_refuses_an_empty_range() -> None:
    with pytest.raises(ValueError, match="high > low"):
        sequences.bounded_mean(1.0, 2.0, 1.0, 1.0, 0.05, 100)


def test_a_p99s_exact_upper_sequence_is_below_the_true_p99_at_some_look_at_most_alpha() -> None:
    """Exponential latencies (true p99 = ln 100) in a fine histogram, 300 paths, 30 looks each:
    a wrong pass of a latency gate at its threshold is an upper bound below the true p99."""
    rng = np.random.default_rng(5)
    true_p99 = math.log(100.0)
    edges = np.linspace(0.05, 10.0, 200)
    looks = np.arange(400, 12_001, 400)
    missed = 0
    for _ in range(300):
        bucket = np.searchsorted(edges, rng.exponential(1.0, int(looks[-1])))
        for n in looks:
            counts = np.bincount(bucket[:n], minlength=len(edges) + 1).cumsum()[:-1]
            buckets = [*zip(edges.tolist(), counts.astype(float).tolist(), strict=True),
                       (math.inf, float(n))]  # fmt: skip
            if sequences.quantile_upper(buckets, 0.99, 0.05) < true_p99:
                missed += 1
                break
    assert missed / 300 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)


def test_a_p99_has_a_finite_upper_bound_after_about_400_samples() -> None:
    def buckets(n: int) -> list[tuple[float, float]]:
        return [(0.001, n * 0.5), (0.002, n * 0.995), (0.004, float(n)), (math.inf, float(n))]

    assert sequences.quantile_upper(buckets(380), 0.99, 0.05) == math.inf
    assert sequences.quantile_upper(buckets(400), 0.99, 0.05) == 0.004
    assert sequences.quantile_upper(buckets(20_000), 0.99, 0.05) == 0.002


CONFSEQ = json.loads((Path(__file__).parent / "data" / "confseq_normal_mixture.json").read_text())


@pytest.mark.parametrize(
    "row", CONFSEQ["rows"], ids=lambda r: f"n{r['n']}-a{r['alpha']}-at{r['n_star']}"
)
def test_the_mixture_boundaries_are_confseqs(row: dict[str, float]) -> None:
    """The one- and two-sided normal-mixture boundaries of confseq, the paper's reference
    implementation (its C++ ``normal_mixture_bound``, tabled by make_confseq_reference.py), from
    10 to a million samples, alpha 0.05 to 0.001, tuned at 60 and 2,000 samples."""
    n, alpha, n_star = row["n"], row["alpha"], row["n_star"]
    assert sequences.one_sided_z(n, alpha, n_star) == pytest.approx(row["one_sided_z"], rel=1e-9)
    assert sequences.mixture_z(n, alpha, n_star) == pytest.approx(row["two_sided_z"], rel=1e-9)


@pytest.mark.parametrize("n", [10, 540, 2000, 40_000])
@pytest.mark.parametrize("alpha", [0.05, 0.05 / 6])
def test_the_one_sided_boundary_is_where_the_one_sided_mixture_reaches_one_over_alpha(
    n: int, alpha: float
) -> None:
    """The one-sided normal mixture (Howard et al. 2021; confseq's
    OneSidedNormalMixture): exp(l S - l^2 n / 2) mixed over l ~ N(0, 1/rho) cut at l >= 0
    (twice the half-normal density), by quadrature, is 1/alpha at S = z sqrt(n); the closed form
    2 sqrt(rho / (n + rho)) exp(S^2 / (2 (n + rho))) Phi(S / sqrt(n + rho)) agrees."""
    rho = sequences.tuned_rho(2 * alpha, 2000.0)  # confseq: best_rho(v_opt, 2 alpha)
    s = sequences.one_sided_z(n, alpha, 2000.0) * math.sqrt(n)
    sd = 1.0 / math.sqrt(rho)
    value, _ = quad(lambda lam: math.exp(lam * s - lam * lam * n / 2) * 2 * norm.pdf(lam, 0, sd),
                    0, 20 * sd, points=[s / n])  # fmt: skip
    assert value == pytest.approx(1.0 / alpha, rel=1e-6)
    closed = 2 * math.sqrt(rho / (n + rho)) * math.exp(s * s / (2 * (n + rho))) * norm.cdf(
        s / math.sqrt(n + rho))  # fmt: skip
    assert closed == pytest.approx(1.0 / alpha, rel=1e-6)


@pytest.mark.parametrize("n", [100, 540, 2000, 20_000])
def test_one_side_at_alpha_is_tighter_than_two_sided_and_about_two_sided_at_twice_alpha(
    n: int,
) -> None:
    one = sequences.one_sided_z(n, 0.05, 2000)
    assert one < sequences.mixture_z(n, 0.05, 2000) - 0.2
    # the two-sided boundary at 2 alpha, with the same rho: within half a percent
    assert one == pytest.approx(sequences.mixture_z(n, 0.1, 2000), rel=5e-3)


def test_a_one_sided_boundary_is_crossed_at_some_look_at_most_alpha_and_twice_as_often() -> None:
    """Gaussian random walks, a look every 20 steps to 4,000: the one-sided boundary at 5 % is
    crossed by at most 5 % of paths (discrete looks cross less than the continuous bound), and
    by about twice as many as one end of the two-sided boundary, which spent half its alpha."""
    rng = np.random.default_rng(1)
    looks = np.arange(20, 4001, 20)
    walks = rng.standard_normal((4000, 4000)).cumsum(axis=1)[:, looks - 1] / np.sqrt(looks)
    one = np.array([sequences.one_sided_z(float(n), 0.05, 500) for n in looks])
    two = np.array([sequences.mixture_z(float(n), 0.05, 500) for n in looks])
    one_crossed, two_crossed = (walks >= one).any(axis=1).mean(), (walks >= two).any(axis=1).mean()
    assert one_crossed <= 0.05
    assert one_crossed > 1.5 * two_crossed


@pytest.mark.parametrize(("teacher_only", "student_only"), [(0.01, 0.0), (0.004, 0.004)])
def test_tangos_paired_sequence_misses_the_true_drop_at_any_look_at_most_alpha(
    teacher_only: float, student_only: float
) -> None:
    """The accuracy drop on pairs, each end a one-sided sequence at 5 % (Tango's score interval
    at ``one_sided_z``): 1,000 paths of 6,000 pairs, a look every 400. A student exactly at a
    drop of 0.01 with no example of its own right (the simulator's at-threshold student), and a
    good one. Each end misses its side of the truth at some look in at most 5 % of paths."""
    rng = np.random.default_rng(13)
    looks = np.arange(400, 6001, 400)
    chances = [teacher_only, student_only, 1 - teacher_only - student_only]
    outcome = rng.choice(3, size=(PATHS, int(looks[-1])), p=chances)
    first = np.cumsum(outcome == 0, axis=1)[:, looks - 1]
    second = np.cumsum(outcome == 1, axis=1)[:, looks - 1]
    truth = teacher_only - student_only
    low_missed = high_missed = 0
    for path in range(PATHS):
        bounds = [stats.tango_paired_difference(float(first[path, k]), float(second[path, k]),
                                                float(n),
                                                sequences.one_sided_z(float(n), 0.05, 2000),
                                                sequences.CONTINUITY)
                  for k, n in enumerate(looks)]  # fmt: skip
        low_missed += any(low > truth for low, _ in bounds)
        high_missed += any(high < truth for _, high in bounds)
    assert low_missed / PATHS <= 0.05 + MC_SLACK
    assert high_missed / PATHS <= 0.05 + MC_SLACK


def test_tangos_bounds_are_where_the_score_test_stops_rejecting() -> None:
    """A student 3 points worse, 16 of 540 pairs its teacher's alone and none its own: the
    score at each bound is z (variance at the bound's difference), and the bounds are tighter
    than Newcombe's interval from the margins, which takes the margins' variance."""
    z = 2.5
    low, high = stats.tango_paired_difference(16, 0, 540, z)
    for d, target in ((low, z), (high, -z)):
        a, b, c = 2 * 540, -16 + (2 * 540 - 16) * d, 0.0
        second_rate = (math.sqrt(b * b - 4 * a * c) - b) / (2 * a)
        score = (16 - 540 * d) / math.sqrt(540 * (2 * second_rate + d * (1 - d)))
        assert score == pytest.approx(target, abs=1e-4)
    newcombe_low, _ = stats.newcombe_paired_difference(508, 16, 0, 16, z)
    assert low > newcombe_low + 0.002
    assert stats.tango_paired_difference(0, 0, 0, z) == (-1.0, 1.0)
    symmetric = stats.tango_paired_difference(20, 20, 1000, 1.96)
    assert symmetric[0] == pytest.approx(-symmetric[1])


def test_the_betting_wealth_from_counts_is_the_bets_played_one_pair_at_a_time() -> None:
    """Waudby-Smith & Ramdas (2023): the wealth after n pairs is the product of
    1 + stake (X_i - m) over the pairs, averaged over the stakes; the counts give it exactly,
    so a look at a window's counts is a look at the martingale, in any order of arrival."""
    rng = np.random.default_rng(3)
    pairs = rng.choice([1, -1, 0], size=300, p=[0.05, 0.02, 0.93])
    m = 0.01
    cap = 1 / (1 + m)
    played = np.mean([np.prod(1 + s * cap * (pairs - m)) for s in sequences.STAKES])
    first, second = float(np.sum(pairs == 1)), float(np.sum(pairs == -1))
    from_counts = sequences._paired_log_wealth(first, second, 300.0, m)
    assert from_counts == pytest.approx(math.log(played), rel=1e-9)


@pytest.mark.parametrize(("first_only", "second_only"), [(0.01, 0.0), (0.04, 0.03), (0.2, 0.19)])
def test_the_betting_lower_sequence_is_above_the_true_difference_at_any_look_at_most_alpha(
    first_only: float, second_only: float
) -> None:
    """The paired drop's fail end at 5 %: 1,000 paths of 6,000 pairs, a look every 100, at a
    true difference of 0.01 leaning one way (the simulator's at-threshold student), both ways,
    and with a fifth of the pairs disagreeing. The end is above the truth exactly when the
    wealth against the truth has reached 1/alpha (it falls as m rises), which Ville's inequality
    allows in at most 5 % of paths, at any look."""
    rng = np.random.default_rng(17)
    looks = np.arange(100, 6001, 100)
    outcome = rng.choice(3, size=(PATHS, int(looks[-1])),
                         p=[first_only, second_only, 1 - first_only - second_only])  # fmt: skip
    first = np.cumsum(outcome == 0, axis=1)[:, looks - 1]
    second = np.cumsum(outcome == 1, axis=1)[:, looks - 1]
    truth, target = first_only - second_only, math.log(1 / 0.05)
    missed = sum(
        any(sequences._paired_log_wealth(float(first[p, k]), float(second[p, k]), float(n),
                                         truth) >= target
            for k, n in enumerate(looks))
        for p in range(PATHS)
    )  # fmt: skip
    assert missed / PATHS <= 0.05 + MC_SLACK
    low = sequences.paired_difference_lower(float(first[0, -1]), float(second[0, -1]), 6000, 0.05)
    assert sequences._paired_log_wealth(first[0, -1], second[0, -1], 6000, low) == pytest.approx(
        target, abs=1e-4
    )  # the end is where the wealth reaches 1/alpha


def test_a_drop_leaning_one_way_clears_its_threshold_with_fewer_pairs_by_betting() -> None:
    """A student worse by 3 or 5 points that is never right where its teacher is wrong: the
    betting sequence's lower end clears a 0.01 threshold at 2.5 % with fewer pairs than Tango's
    score interval at the one-sided mixture's z (the fail end before), on the expected counts
    (480 against 580, and 220 against 330; at 2 points, twice the threshold, it needs 15 % more:
    the price of its four stakes)."""

    def first_clear(drop: float, lower: Callable[[float, float], float]) -> int:
        return next(n for n in range(50, 5000, 10) if lower(drop * n, float(n)) > 0.01)

    for drop, fewer in ((0.03, 0.9), (0.05, 0.75)):
        betting = first_clear(drop, lambda t, n: sequences.paired_difference_lower(t, 0, n, 0.025))
        tango = first_clear(
            drop,
            lambda t, n: stats.tango_paired_difference(
                t, 0, n, sequences.one_sided_z(n, 0.025, 2000), sequences.CONTINUITY
            )[0],
        )
        assert betting < fewer * tango
    assert sequences.paired_difference_lower(0, 0, 0, 0.05) == -1.0
    assert sequences.paired_difference_lower(3, 40, 100, 0.05) < (3 - 40) / 100
