"""The interval arithmetic, against published values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller import stats

Z95 = stats.z_value(0.95)


def test_z_value() -> None:
    assert pytest.approx(1.959964, abs=1e-6) == Z95
    assert stats.z_value(0.99) == pytest.approx(2.575829, abs=1e-6)


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I (Wilson score, method 3).
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
        (5, 10, (0.2366, 0.7634)),
    ],
)
def test_wilson_matches_published_values(
    successes: int, trials: int, expected: tuple[float, float]
) -> None:
    low, high = stats.wilson(successes, trials, Z95)
    assert low == pytest.approx(expected[0], abs=5e-5)
    assert high == pytest.approx(expected[1], abs=5e-5)


def test_wilson_without_trials_is_the_whole_range() -> None:
    assert stats.wilson(0, 0, Z95) == (0.0, 1.0)


def test_extrapolated_counts_beyond_their_trials_are_clamped() -> None:
    # Prometheus's increase() extrapolates series one by one: 101.3 "agreements" in 100.8
    # comparisons happens, and must not crash the analysis.
    assert stats.wilson(101.3, 100.8, Z95) == stats.wilson(100.8, 100.8, Z95)
    assert stats.wilson(-0.2, 50, Z95) == stats.wilson(0, 50, Z95)
    low, high = stats.newcombe_difference(50.4, 50, 49.7, 50, Z95)
    assert -1 <= low <= high <= 1


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # Newcombe (1998), Statistics in Medicine 17:873, Table II (method 10).
        ((56, 70), (48, 80), (0.0524, 0.3339)),
        ((9, 10), (3, 10), (0.1705, 0.8090)),
        ((6, 7), (2, 7), (0.0582, 0.8062)),
        ((5, 56), (0, 29), (-0.0381, 0.1926)),
    ],
)
def test_newcombe_difference_matches_published_values(
    a: tuple[int, int], b: tuple[int, int], expected: tuple[float, float]
) -> None:
    low, high = stats.newcombe_difference(a[0], a[1], b[0], b[1], Z95)
    assert low == pytest.approx(expected[0], abs=5e-5)
    assert high == pytest.approx(expected[1], abs=5e-5)


def _histogram(samples: np.ndarray, bounds: list[float]) -> stats.Buckets:
    return [(bound, float((samples <= bound).sum())) for bound in bounds] + [
        (math.inf, float(len(samples)))
    ]


BOUNDS = [0.001 * n for n in range(1, 101)]  # 1 ms buckets up to 100 ms


def test_quantile_interval_covers_the_true_quantile_at_bucket_edges() -> None:
    samples = np.random.default_rng(7).exponential(0.01, 5000)
    low, high = stats.quantile_interval(_histogram(samples, BOUNDS), 0.99, Z95)
    true_p99 = float(np.quantile(samples, 0.99))
    assert low <= true_p99 <= high
    assert low in [0.0, *BOUNDS] and high in BOUNDS  # widened to edges, never narrowed
    assert high - low < 0.02


def test_a_student_as_fast_as_its_teacher_passes_a_ratio_gate_on_the_gateways_buckets() -> None:
    """On the gateway's own buckets (about 25 % apart), edge-based bounds put one bucket's width
    into a p99 ratio twice, so a ratio of 1.0 could never be shown below 1.2; interpolated ones
    can, and a student 1.5x slower is still shown above it."""
    from gateway.metrics import LATENCY_BUCKETS

    rng = np.random.default_rng(3)
    bounds = list(LATENCY_BUCKETS)
    teacher = _histogram(rng.lognormal(np.log(0.002), 0.6, 100_000), bounds)
    same = _histogram(rng.lognormal(np.log(0.002), 0.6, 100_000), bounds)
    slower = _histogram(rng.lognormal(np.log(0.003), 0.6, 100_000), bounds)

    def ratio_bounds(student: stats.Buckets, interpolate: bool) -> tuple[float, float]:
        s_low, s_high = stats.quantile_interval(student, 0.99, Z95, interpolate)
        t_low, t_high = stats.quantile_interval(teacher, 0.99, Z95, interpolate)
        return s_low / t_high, s_high / t_low

    assert ratio_bounds(same, interpolate=False)[1] > 1.2
    assert ratio_bounds(same, interpolate=True)[1] < 1.2
    assert ratio_bounds(slower, interpolate=True)[0] > 1.2


def test_quantile_interval_needs_enough_samples_for_a_p99() -> None:
    few = np.random.default_rng(1).exponential(0.01, 200)
    assert stats.quantile_interval(_histogram(few, BOUNDS), 0.99, Z95)[1] == math.inf
    many = np.random.default_rng(1).exponential(0.01, 2000)
    assert stats.quantile_interval(_histogram(many, BOUNDS), 0.99, Z95)[1] < math.inf
    assert stats.quantile_interval([], 0.99, Z95) == (0.0, math.inf)


def test_mean_interval_is_conservative_and_covers_the_mean() -> None:
    values = np.random.default_rng(3).uniform(0, 0.5, 4000)
    bounds = [0.1, 0.2, 0.3, 0.4, 0.5]
    mean, (low, high) = stats.mean_interval(
        float(values.sum()), len(values), _histogram(values, bounds), Z95
    )
    assert mean == pytest.approx(values.mean())
    assert low <= values.mean() <= high
    exact_spread = Z95 * values.std() / math.sqrt(len(values))
    assert (high - low) / 2 >= exact_spread  # the bucket bound can only widen it


def test_mean_interval_without_data_or_with_unbounded_values() -> None:
    assert math.isnan(stats.mean_interval(0, 0, [], Z95)[0])
    unbounded = [(1.0, 5.0), (math.inf, 6.0)]
    assert stats.mean_interval(8.0, 6, unbounded, Z95)[1] == (0.0, math.inf)


def test_the_paired_interval_covers_the_true_difference_95_times_in_100() -> None:
    """Coverage, simulated: a teacher right 97 %, a student 1.5 points worse, correlated as a
    distilled pair is (most examples both right)."""
    rng = np.random.default_rng(11)
    cells = [0.95, 0.02, 0.005, 0.025]  # both right, first only, second only, neither
    true_difference = cells[1] - cells[2]
    covered = 0
    for _ in range(2000):
        both, first, second, neither = rng.multinomial(800, cells)
        low, high = stats.newcombe_paired_difference(both, first, second, neither, Z95)
        covered += low <= true_difference <= high
    assert 0.93 <= covered / 2000 <= 0.975


def test_the_paired_interval_is_tighter_than_two_independent_samples_and_antisymmetric() -> None:
    paired = stats.newcombe_paired_difference(900, 40, 20, 40, Z95)
    independent = stats.newcombe_difference(940, 1000, 920, 1000, Z95)
    assert paired[0] > independent[0] and paired[1] < independent[1]
    assert paired[0] > 0  # 20 more right of 1,000, shown on the same requests
    swapped = stats.newcombe_paired_difference(900, 20, 40, 40, Z95)
    assert swapped == pytest.approx((-paired[1], -paired[0]))
    assert stats.newcombe_paired_difference(0, 0, 0, 0, Z95) == (-1.0, 1.0)
