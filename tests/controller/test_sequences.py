"""Confidence sequences: checked against their definition (the mixture martingale reaches 1/alpha
exactly on the boundary) and by brute-force Monte Carlo of their coverage at every look."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import norm

from controller import sequences

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
