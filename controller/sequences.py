"""Confidence sequences: intervals that hold at every look, not just at one.

A controller looks at a step's growing window every interval and acts on the first look whose
interval clears the threshold. A fixed-confidence interval (z = 1.96) misses its truth at *some*
look far more often than 5 % (``distill-canary simulate`` measured 10-12 % promoted at the
threshold). A confidence sequence is a sequence of intervals whose chance of missing the truth
at any look, ever, is at most alpha.

The boundary is Robbins' two-sided normal mixture (Howard, Ramdas, McAuliffe & Sekhon, 2021,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2), eq. (14)
and Proposition 2): for a sum ``S_n`` of ``n`` centred increments of variance ``sigma^2``,

    P(exists n: |S_n| >= sqrt((n sigma^2 + rho) log((n sigma^2 + rho) / (rho alpha^2)))) <= alpha

(exactly, by Ville's inequality, for Gaussian increments; asymptotically otherwise: Waudby-Smith,
Arnold, Wu, Howard & Ramdas, 2024, "Time-uniform central limit theory and asymptotic confidence
sequences", Ann. Statist.). In units of ``sigma sqrt(n)`` that is a z that depends on ``n``:
``mixture_z``. A gate reads one end of an interval at a time, each at its own alpha, so the
gates use the ONE-sided normal mixture instead (``one_sided_z``, from the same
paper): the two-sided boundary spends alpha / 2 on each end. Every interval in
``controller.stats`` takes a z, so each becomes a sequence by taking that z in place of 1.96:
the Wilson interval (the variance at the null, ``p (1 - p)``, which is also the largest
variance any value in [0, 1] with mean ``p`` can have, so the same sequence holds for the mean
of any bounded value: ``bounded_mean``), Newcombe's differences built from Wilson intervals,
Tango's score interval for a paired difference, and the order-statistic interval for a quantile
(the number of samples below the true quantile is binomial). ``tests/controller/test_stats.py``
and ``tests/controller/test_sequences.py``
measure their coverage at every look by Monte Carlo.

The mixture's ``rho`` sets the sample size at which the sequence is tightest; ``tuned_rho``
puts it at ``n_star`` (Waudby-Smith et al., 2024, eq. (13)): the controller uses the policy's
``min_requests``, the first look that can decide.
"""

from __future__ import annotations

import functools
import math

from scipy.optimize import brentq
from scipy.special import betainc, betaln

from controller import stats

CONTINUITY = 0.5
"""Half a success: the Wilson bounds of a sequence are read this much further out (see
``proportion``)."""


def tuned_rho(alpha: float, n_star: float) -> float:
    """The two-sided mixture parameter (in samples) that makes its boundary narrowest at
    ``n_star`` (confseq's ``TwoSidedNormalMixture::best_rho``)."""
    log_inverse = -2.0 * math.log(alpha)
    return max(n_star, 1.0) / (log_inverse + math.log(log_inverse + 1.0))


def mixture_z(n: float, alpha: float, n_star: float) -> float:
    """The time-uniform z at ``n`` samples: the two-sided normal-mixture boundary at level
    ``alpha`` over ``sqrt(n)`` (unit variance), tuned to be tightest at ``n_star``. About 3.0 at
    ``n_star`` for alpha 0.05 (1.96 for one look), growing like ``sqrt(log n)`` after. For an
    interval whose both ends are read at once; a gate's ends are ``one_sided_z``."""
    rho = tuned_rho(alpha, n_star)
    n = max(n, 1.0)
    return math.sqrt((n + rho) / n * math.log((n + rho) / (rho * alpha * alpha)))


def one_sided_log_mixture(s: float, v: float, rho: float) -> float:
    """log of the one-sided normal mixture martingale at sum ``s`` and intrinsic time ``v``: the
    mixture of exp(l s - l^2 v / 2) over l ~ N(0, 1/rho) cut at l >= 0 (Howard et al. 2021, the
    one-sided normal mixture; confseq's ``OneSidedNormalMixture::log_superMG``)."""
    spread = math.sqrt(v + rho)
    tail = 0.5 * math.erfc(-s / spread / math.sqrt(2.0))  # Phi(s / sqrt(v + rho))
    return 0.5 * math.log(4.0 * rho / (v + rho)) + s * s / (2.0 * (v + rho)) + math.log(tail)


@functools.lru_cache(maxsize=1 << 16)
def one_sided_z(n: float, alpha: float, n_star: float) -> float:
    """The time-uniform z of ONE end at ``n`` samples: P(exists n: S_n >= z sqrt(n)) <= alpha,
    the boundary where the one-sided mixture reaches 1/alpha, found by root-finding, its rho
    tuned at ``n_star`` for 2 alpha (confseq's ``OneSidedNormalMixture::best_rho``). A gate
    reads each end of an interval at its own alpha, so each end is its own one-sided sequence:
    with the two-sided boundary each end spent alpha / 2 of it. The root lies between the
    two-sided boundaries at 2 alpha and at alpha (the one-sided martingale is the two-sided one
    times 2 Phi, which is between 1 and 2): about 2.8 at ``n_star`` for alpha 0.05."""
    n = max(n, 1.0)
    rho = tuned_rho(2.0 * alpha, n_star)
    target = math.log(1.0 / alpha)

    def excess(s: float) -> float:
        return one_sided_log_mixture(s, n, rho) - target

    def two_sided(level: float) -> float:
        return math.sqrt((n + rho) * math.log((n + rho) / (rho * level * level)))

    low, high = two_sided(min(2.0 * alpha, 1.0)), two_sided(alpha)
    if excess(low) >= 0.0:  # at 2 alpha >= 1 the bracket's low end can already be over
        return low / math.sqrt(n)
    tolerance = 1e-9 * math.sqrt(n)  # z to 1e-9
    return float(brentq(excess, low, high, xtol=tolerance)) / math.sqrt(n)


def proportion(successes: float, trials: float, alpha: float, n_star: float,
               one_sided: bool = False) -> stats.Interval:  # fmt: skip
    """A confidence sequence for a proportion: the Wilson interval at ``mixture_z`` (both ends
    together at ``alpha``), or with ``one_sided`` at ``one_sided_z`` (each end on its own at
    ``alpha``: a gate reads one end at a time), continuity corrected (without it, at a true rate
    of 0.001 the lower bound passed the truth at some look in 6.8 % of runs against alpha 5 %;
    with it 4.1 %)."""
    z = (one_sided_z if one_sided else mixture_z)(trials, alpha, n_star)
    return stats.wilson(successes, trials, z, CONTINUITY)


def bounded_mean(total: float, count: float, low: float, high: float, alpha: float,
                 n_star: float) -> stats.Interval:  # fmt: skip
    """A confidence sequence for the mean of values known to lie in [low, high], from their sum
    and count alone (what a Prometheus counter pair gives): rescaled to [0, 1], where a mean of
    ``m`` has variance at most ``m (1 - m)``, so the proportion's sequence covers it. For gates on
    errors, similarities or per-example scores with a known range."""
    span = high - low
    if span <= 0:
        raise ValueError("bounded_mean needs high > low")
    scaled_low, scaled_high = proportion((total - low * count) / span, count, alpha, n_star)
    return (low + span * scaled_low, low + span * scaled_high)


def _rate_log_ratio(successes: float, trials: float, p: float, b: float,
                    log_posterior: float | None = None) -> float:  # fmt: skip
    """log of the Beta(1, b) mixture (cut at ``p``) over the likelihood at ``p``;
    ``log_posterior`` is ``betaln(1 + successes, b + failures)`` when the caller has it."""
    failures = trials - successes
    inside = float(betainc(1.0 + successes, b + failures, p))
    if inside <= 0.0:
        return -math.inf
    if log_posterior is None:
        log_posterior = float(betaln(1.0 + successes, b + failures))
    prior_below = -math.expm1(b * math.log1p(-p))  # Beta(1, b) mass below p: 1 - (1 - p)^b
    # betaln(1, b) = -log(b)
    return (log_posterior + math.log(b) + math.log(inside) - math.log(prior_below)
            - successes * math.log(p) - failures * math.log1p(-p))  # fmt: skip


def rate_upper(successes: float, trials: float, alpha: float, prior_mean: float) -> float:
    """An exact one-sided confidence sequence for a small rate: ``U_n`` with
    P(exists n: p > U_n) <= alpha, for errors among requests (or any values in [0, 1]).

    For rare events the normal mixture is both loose and slow: it needs about z^2 = 9 requests per
    unit of rate before it can say a rate is below the threshold with no error at all, where a
    single look at 1.96 needed 3.8 (at ``max_error_rate: 0.001``, 3,800 requests). Here the
    statistic is the likelihood ratio of the rate ``p`` against a Beta(1, b) mixture of the
    rates below it (the prior cut at ``p``), a nonnegative martingale under ``p``, and
    Ville's inequality bounds its ever reaching 1/alpha (Howard et al., 2021, Section 3.3: the
    beta-binomial mixture; Robbins, 1970). With ``prior_mean`` half the threshold it clears
    0.001 at about 3,950 requests without errors.

    Values in [0, 1] rather than 0/1 are covered too: each factor of the likelihood ratio is
    convex in the value, so its mean is at most the Bernoulli's (1) and the product stays a
    supermartingale."""
    if trials <= 0 or successes >= trials:  # every request an error: nothing below 1 holds
        return 1.0
    successes = max(successes, 0.0)
    b, target = 1.0 / prior_mean - 1.0, math.log(1.0 / alpha)
    posterior = float(betaln(1.0 + successes, b + trials - successes))
    low, high = max(successes / trials, 1e-12), 1.0 - 1e-12
    if _rate_log_ratio(successes, trials, low, b, posterior) >= target:
        return low
    while high - low > 1e-3 * low:  # bisection (to 0.1 %); geometric while it spans decades
        middle = math.sqrt(low * high) if high > 4.0 * low else (low + high) / 2.0
        if _rate_log_ratio(successes, trials, middle, b, posterior) >= target:
            high = middle
        else:
            low = middle
    return high


def exceedances_allowed(trials: float, rate: float, alpha: float) -> int:
    """The most of ``trials`` samples that may lie above a value while ``rate_upper`` (prior mean
    ``rate / 2``) still shows that fewer than ``rate`` of all values do; -1 while even none is
    too few samples. Behind ``quantile_upper``."""
    b, target = 2.0 / rate - 1.0, math.log(1.0 / alpha)
    if trials <= 0 or _rate_log_ratio(0.0, trials, rate, b) < target:
        return -1
    low, high = 0, max(math.floor(rate * trials), 0)  # the ratio falls as exceedances rise
    while low < high:
        middle = (low + high + 1) // 2
        if _rate_log_ratio(float(middle), trials, rate, b) >= target:
            low = middle
        else:
            high = middle - 1
    return low


def quantile_upper(buckets: stats.Buckets, quantile: float, alpha: float,
                   interpolate: bool = False) -> float:  # fmt: skip
    """An exact upper confidence sequence for a high quantile from a histogram: the value at rank
    ``n - k``, ``k`` the most samples that may lie above it while the exact rate sequence shows
    that fewer than ``1 - quantile`` of all values do. If the true quantile were above it, at
    most ``k`` samples would exceed the true quantile, whose exceedance rate is exactly
    ``1 - quantile``: the rate sequence would have crossed, which it does with probability at most
    alpha, at any look. A p99 has a finite bound after about 400 samples at alpha 0.05 (the
    normal mixture's order-statistic bound needed about 1,200; one look at 1.96, 560)."""
    n = stats.sample_count(buckets)
    allowed = exceedances_allowed(n, 1.0 - quantile, alpha)
    if allowed < 0:
        return math.inf
    return stats.value_at_rank(buckets, n - allowed, interpolate)


STAKES = tuple(0.9 * 0.5**k for k in range(4))
"""The paired difference's bets, as fractions of the largest a bet may be (``1 / (1 + m)``):
0.9, 0.45, 0.225, 0.1125. Kelly's stake against a mean ``m`` is about (mean - m) / variance:
near the largest for a drop whose pairs all lean one way (a student a few points worse, right
where its teacher is wrong almost never), about a tenth of it when a fifth of the pairs
disagree both ways. Each halving costs at most a factor of two in the stake, and the four cost
log 4 of the wealth (what a mixture's width costs the normal mixture)."""


def _paired_log_wealth(first_only: float, second_only: float, total: float, m: float) -> float:
    """log of the mean of the constant-stake betting martingales against ``E[X] <= m`` for
    X = +1 (the first alone right), -1 (the second alone), 0 (both or neither), after ``total``
    pairs: prod (1 + stake (X_i - m)) depends on the counts alone, so a look at a window's
    counts is a look at the martingale."""
    cap = 1.0 / (1.0 + m)
    rest = total - first_only - second_only
    logs = [first_only * math.log1p(s * cap * (1.0 - m))
            + (second_only * math.log1p(-s * cap * (1.0 + m)) if second_only else 0.0)
            + rest * math.log1p(-s * cap * m) for s in STAKES]  # fmt: skip
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs) / len(logs))


def paired_difference_lower(first_only: float, second_only: float, total: float,
                            alpha: float) -> float:  # fmt: skip
    """An exact lower confidence sequence for a paired difference of accuracies (the first's
    minus the second's, each pair scored as X in {-1, 0, +1}): ``L_n`` with P(exists n:
    E[X] < L_n) <= alpha.

    The betting confidence sequence of Waudby-Smith & Ramdas (2023, "Estimating means of bounded
    random variables by betting", JRSS-B, Section 4): for each ``m``, the wealth of bets of
    constant stake on X exceeding ``m`` is a nonnegative supermartingale whenever the mean is at
    most ``m`` (each factor's mean is ``1 + stake (E[X] - m) <= 1``), so is their average (one
    per ``STAKES``), and Ville's inequality bounds its ever reaching 1/alpha. ``L_n`` is the
    smallest ``m`` it has not reached: the wealth falls as ``m`` rises. Exact at every sample
    size. Where the pairs lean one way (a student wrong where its teacher is right, almost never
    the reverse) it clears a threshold of 0.01 with a sixth fewer pairs than Tango's interval at
    the mixture's z for a drop of 3 points, a third fewer for 5; for a drop of 2 it needs 15 %
    more (``tests/controller/test_sequences.py``)."""
    if total <= 0:
        return -1.0
    target = math.log(1.0 / alpha)
    estimate = (first_only - second_only) / total  # the wealth is at most 1 there (Jensen)
    low = -1.0 + 1e-9
    if _paired_log_wealth(first_only, second_only, total, low) < target:
        return -1.0
    return float(brentq(lambda m: _paired_log_wealth(first_only, second_only, total, m) - target,
                        low, estimate, xtol=1e-7))  # fmt: skip
