"""Confidence intervals behind every gate. All intervals are two-sided at the policy's confidence.

- ``wilson``: the Wilson score interval for a proportion (error rate, agreement, accuracy); sound
  at small counts and at 0 or n successes, unlike the normal ("Wald") interval.
- ``newcombe_difference``: Newcombe's hybrid score interval for p1 - p2 of two independent
  proportions, built from their Wilson intervals (method 10 in Newcombe, 1998).
- ``newcombe_paired_difference``: the same idea for p1 - p2 measured on the same subjects (a
  paired 2x2 table), with the correlation between the two (method 10 in Newcombe, 1998, "Improved
  confidence intervals for the difference between binomial proportions based on paired data",
  Statistics in Medicine 17:2635). Only the discordant pairs move it, as in McNemar's test.
- ``quantile_interval``: a distribution-free interval for a quantile from a histogram: the ranks
  ``n*q -/+ z*sqrt(n*q*(1-q))`` (the binomial order-statistic bounds) read off at the outer edges of
  the buckets that hold them, so the histogram's resolution widens the interval, never narrows it.
  Too few samples put the upper rank past the last one: the upper bound is then infinite.
  With ``interpolate``, the ranks are read by linear interpolation inside their buckets instead
  (PromQL's assumption, the one the point estimate already makes). The latency ratio gate uses it:
  both histograms share their bucket edges, so edge-based bounds would put one bucket's width
  (about 25 %) into the ratio twice, and a student exactly as fast as its teacher could never
  pass a 1.2 ratio however many samples it had (``distill-canary simulate`` showed it).
- ``mean_interval``: a mean from a histogram's sum and count, checked against the range its
  buckets allow, with a CLT interval whose variance is the most the window's own values can
  spread given their buckets. That bounds the window's (sample) variance, not the distribution's:
  it is an estimate plugged in as if known, so the interval is asymptotic, not exact.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from controller.promtext import histogram_quantile

Interval = tuple[float, float]
Buckets = list[tuple[float, float]]  # cumulative (upper bound, count), ascending, ending at +Inf


def z_value(confidence: float) -> float:
    """Two-sided normal quantile: 1.96 for 0.95."""
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def wilson(successes: float, trials: float, z: float, correction: float = 0.0) -> Interval:
    """With ``correction`` (0.5: the continuity correction), each bound is read half a success
    further out, which keeps the lower bound honest at a handful of successes."""
    if trials <= 0:
        return (0.0, 1.0)
    # PromQL's increase() extrapolates each series on its own, so a window can report a few more
    # successes than trials (or fewer than none): a proportion still lies in 0..1.
    successes = min(max(successes, 0.0), trials)
    if correction:
        low = wilson(max(successes - correction, 0.0), trials, z)[0] if successes > 0 else 0.0
        high = wilson(min(successes + correction, trials), trials, z)[1]
        return (low, 1.0 if successes >= trials else high)
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2.0 * trials)) / denominator
    spread = z * math.sqrt(p * (1.0 - p) / trials + z * z / (4.0 * trials * trials)) / denominator
    low = 0.0 if successes <= 0 else max(0.0, centre - spread)  # exact ends, no rounding dust
    high = 1.0 if successes >= trials else min(1.0, centre + spread)
    return (low, high)


def newcombe_difference(
    successes_1: float,
    trials_1: float,
    successes_2: float,
    trials_2: float,
    z: float,
    correction: float = 0.0,
) -> Interval:
    """Interval for p1 - p2."""
    if trials_1 <= 0 or trials_2 <= 0:
        return (-1.0, 1.0)
    successes_1 = min(max(successes_1, 0.0), trials_1)
    successes_2 = min(max(successes_2, 0.0), trials_2)
    p1, p2 = successes_1 / trials_1, successes_2 / trials_2
    l1, u1 = wilson(successes_1, trials_1, z, correction)
    l2, u2 = wilson(successes_2, trials_2, z, correction)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return (max(-1.0, low), min(1.0, high))


def newcombe_paired_difference(
    both: float,
    first_only: float,
    second_only: float,
    neither: float,
    z: float,
    correction: float = 0.0,
) -> Interval:
    """Interval for p1 - p2 from a paired table: ``both`` successes, ``first_only`` (a success of
    the first alone), ``second_only`` and ``neither``."""
    n = both + first_only + second_only + neither
    if n <= 0:
        return (-1.0, 1.0)
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = wilson(both + first_only, n, z, correction)
    l2, u2 = wilson(both + second_only, n, z, correction)
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (
        first_only + neither)  # fmt: skip
    # phi, the correlation of the two outcomes, with Newcombe's continuity correction.
    cross = both * neither - first_only * second_only
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    difference = p1 - p2
    low = difference - math.sqrt(
        max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    )
    high = difference + math.sqrt(
        max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))  # fmt: skip
    return (max(-1.0, low), min(1.0, high))


def tango_paired_difference(
    first_only: float, second_only: float, n: float, z: float, correction: float = 0.0
) -> Interval:
    """Tango's score interval for p1 - p2 from a paired table (Tango, 1998, "Equivalence test
    and confidence interval for the difference in proportions for the paired-sample design",
    Statistics in Medicine 17:891): the values of the difference ``d`` that the score test does
    not reject, its variance taken at ``d`` itself, with the discordant rates at their maximum
    likelihood under ``d`` (as Wilson's is at its null). Only the discordant pairs move it.

    Where the discordant pairs all lean one way (a student worse than its teacher on some
    examples and never better), Newcombe's interval, built from the two margins' Wilson
    intervals, takes the variance of the margins (about the teacher's error rate plus the
    student's); the score test takes the variance the data would have at the threshold, about
    the threshold itself: 540 pairs with 16 of them the teacher's alone (a student 3 points worse)
    are 4.4 standard errors above a drop of 0.01 for Tango, 2.6 for Newcombe.

    ``correction`` reads each bound that many pairs further out (as ``wilson`` does)."""
    if n <= 0:
        return (-1.0, 1.0)
    first_only, second_only = max(first_only, 0.0), max(second_only, 0.0)
    if first_only + second_only > n:  # PromQL's extrapolation: keep the table possible
        scale = n / (first_only + second_only)
        first_only, second_only = first_only * scale, second_only * scale
    low = _tango_root(first_only - second_only - correction, first_only, second_only, n, z,
                      -1.0, min(1.0, (first_only - second_only) / n))  # fmt: skip
    high = _tango_root(first_only - second_only + correction, first_only, second_only, n, -z,
                       max(-1.0, (first_only - second_only) / n), 1.0)  # fmt: skip
    return (low, high)


def _tango_score(excess: float, first_only: float, second_only: float, n: float,
                 d: float) -> float:  # fmt: skip
    """Tango's statistic at the difference ``d``: (first_only - second_only - n d) over its
    standard error under ``d`` (``excess`` is the numerator's count difference)."""
    a = 2.0 * n
    b = -first_only - second_only + (2.0 * n - first_only + second_only) * d
    c = -second_only * d * (1.0 - d)
    second_rate = (math.sqrt(max(b * b - 4.0 * a * c, 0.0)) - b) / (2.0 * a)
    variance = n * (2.0 * second_rate + d * (1.0 - d))
    numerator = excess - n * d
    if variance <= 0.0:
        return math.copysign(math.inf, numerator) if numerator else 0.0
    return numerator / math.sqrt(variance)


def _tango_root(excess: float, first_only: float, second_only: float, n: float, z: float,
                low: float, high: float) -> float:  # fmt: skip
    """The ``d`` in [low, high] where the score falls to ``z`` (it falls as ``d`` rises), by
    bisection to 1e-7; an end of the range when the score is past ``z`` over all of it."""
    if _tango_score(excess, first_only, second_only, n, low) <= z:
        return low
    if _tango_score(excess, first_only, second_only, n, high) >= z:
        return high
    while high - low > 1e-7:
        middle = (low + high) / 2.0
        if _tango_score(excess, first_only, second_only, n, middle) > z:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def sample_count(buckets: Buckets) -> float:
    return buckets[-1][1] if buckets else 0.0


def quantile_interval(
    buckets: Buckets, quantile: float, z: float, interpolate: bool = False
) -> Interval:
    n = sample_count(buckets)
    if n <= 0:
        return (0.0, math.inf)
    spread = z * math.sqrt(n * quantile * (1.0 - quantile))
    low_rank = math.floor(n * quantile - spread)
    high_rank = math.ceil(n * quantile + spread) + 1
    if high_rank > n:
        high = math.inf
    elif interpolate:
        high = histogram_quantile(high_rank / n, buckets)
    else:
        high = _upper_edge_at_rank(buckets, high_rank)
    if low_rank < 1:
        low = 0.0
    elif interpolate:
        low = histogram_quantile(low_rank / n, buckets)
    else:
        low = _lower_edge_at_rank(buckets, low_rank)
    return (low, high)


def value_at_rank(buckets: Buckets, rank: float, interpolate: bool) -> float:
    """The ``rank``-th smallest sample (1-based) read off a histogram: the upper edge of its
    bucket, or by interpolation inside it."""
    n = sample_count(buckets)
    if interpolate:
        return histogram_quantile(rank / n, buckets) if n > 0 else math.nan
    return _upper_edge_at_rank(buckets, rank)


def _upper_edge_at_rank(buckets: Buckets, rank: float) -> float:
    for bound, count in buckets:
        if count >= rank:
            return bound
    return math.inf


def _lower_edge_at_rank(buckets: Buckets, rank: float) -> float:
    previous = 0.0
    for bound, count in buckets:
        if count >= rank:
            return previous
        previous = bound
    return previous


SUM_TOLERANCE = 1e-6
"""How far (relative to the buckets' upper end) a window's mean may lie outside the range its
buckets allow and still be used: float rounding of the sums, not a broken sum."""


def mean_interval(total: float, count: float, buckets: Buckets, z: float) -> tuple[float, Interval]:
    """Mean, and an interval around it, of ``count`` values >= 0 counted in ``buckets``.

    Each value lies in its bucket, between the edge below (0 for the first) and its own: the
    mean must lie between sum(lower x count) / n and sum(upper x count) / n, and the window's
    variance is at most sum(upper^2 x count) / n less the mean squared. That bounds the window's
    own (sample) variance given its buckets; the interval uses it as the distribution's (a CLT),
    so it is asymptotic, not exact.

    A mean outside that range is a broken sum, not data (a float64 ``_sum`` that once took 1e30
    has swallowed every increment since; inf or NaN after one infinite value): it is not used.
    The mean is then only known to lie in the buckets' range, so the interval is that range
    widened by the spread (with the variance bound at its lower end), and the value its middle.
    """
    if count <= 0:
        return (math.nan, (0.0, math.inf))
    counted = buckets[-1][1] if buckets else 0.0
    if counted <= 0:
        return (total / count, (0.0, math.inf))  # no buckets: no variance bound
    lowest = highest = second_moment = 0.0
    previous_bound = previous_count = 0.0
    for bound, cumulative in buckets:
        in_bucket = cumulative - previous_count
        if in_bucket > 0:
            if math.isinf(bound):
                return (total / count, (0.0, math.inf))  # unbounded values: no variance bound
            lowest += in_bucket * previous_bound
            highest += in_bucket * bound
            second_moment += in_bucket * bound * bound
        previous_bound, previous_count = bound, cumulative
    lowest, highest, second_moment = lowest / counted, highest / counted, second_moment / counted
    mean = total / count
    slack = SUM_TOLERANCE * highest
    if lowest - slack <= mean <= highest + slack:  # False for NaN
        spread = z * math.sqrt(max(second_moment - mean * mean, 0.0) / count)
        return (mean, (max(0.0, mean - spread), mean + spread))
    spread = z * math.sqrt(max(second_moment - lowest * lowest, 0.0) / count)
    return ((lowest + highest) / 2.0, (max(0.0, lowest - spread), highest + spread))
