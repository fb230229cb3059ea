"""The cascade's threshold chosen from data, with a guarantee that holds on finite samples.

Learn-then-Test (Angelopoulos, Bates, Candès, Jordan & Lei, 2021, "Learn then Test: Calibrating
predictive algorithms to achieve risk control"), with fixed-sequence testing: the thresholds are
a grid fixed in advance, 1.0 down to 0. The risk of threshold ``t`` is R(t), the fraction of
requests the cascade answers with the student (confidence >= t) *and* whose answer differs from
the teacher's. Each t is the null hypothesis "R(t) > max_disagreement", tested in order from the
highest t (which escalates nearly everything) down, stopping at the first one not rejected; the
threshold is the last rejected. Testing in a fixed order needs no multiple-testing correction:
a wrong choice needs the first true null in the order to be rejected, one test at level delta.

The test is the binomial one (LTT's p-value): with ``n`` shadowed requests of which ``x`` would
have been answered wrongly, p = P(Binomial(n, max_disagreement) <= x); reject at p <= delta.
This is the exact Clopper-Pearson upper bound being below max_disagreement, valid on any ``n``.

Recomputed as data arrives, each look spends its own share of delta: looks happen when the count
reaches ``min_samples`` x 2^k, and look k tests at delta / ((k + 1)(k + 2)), which sums to delta
over all looks (a union bound). So the chance that *any* threshold ever chosen breaks the bound
is at most delta, however long it runs. Between looks the last choice stands. Doubling makes the
price small: by n = 100 x 2^10 the look's level is delta / 132.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from scipy.special import bdtr, bdtri  # scipy.special only: scipy.stats is kept out of serving


def binomial_cdf(x: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= x), through the regularised incomplete beta (``scipy.special.bdtr``):
    O(1) at any n, where summing x + 1 terms took 0.16 s at n = 1 M and stalled the event loop."""
    if x >= n:
        return 1.0
    if x < 0:
        return 0.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return float(bdtr(x, n, p))


def upper_bound(x: int, n: int, delta: float) -> float:
    """The one-sided Clopper-Pearson upper bound: the p at which P(Binomial(n, p) <= x) = delta
    (``bdtri``, the incomplete beta's inverse: Beta(x + 1, n - x)'s 1 - delta quantile)."""
    if n <= 0 or x >= n:
        return 1.0
    return float(bdtri(x, n, delta))


def look_delta(look: int, delta: float) -> float:
    """What look ``look`` (0, 1, ...) may spend: delta / ((k + 1)(k + 2)), summing to delta."""
    return delta / ((look + 1) * (look + 2))


def grid(step: float) -> list[float]:
    """The thresholds tried, rising: 0, step, ..., 1.0 (1.0 always in)."""
    count = round(1.0 / step)
    values = sorted({round(min(1.0, i * step), 10) for i in range(count + 1)} | {1.0})
    return values


def fixed_sequence(
    wrong_at: list[int], n: int, max_disagreement: float, delta: float
) -> int | None:
    """The index (into the rising grid) of the lowest threshold that fixed-sequence testing
    accepts, from the top down; None when even the highest is not shown safe. ``wrong_at[i]``
    counts the requests answered by the student at grid[i] whose answer differs from the
    teacher's (non-increasing in i)."""
    chosen = None
    for index in range(len(wrong_at) - 1, -1, -1):
        if binomial_cdf(wrong_at[index], n, max_disagreement) > delta:
            break
        chosen = index
    return chosen


@dataclass(frozen=True)
class Choice:
    """The evidence behind a threshold (exported as metrics and in the admin API)."""

    threshold: float | None  # None: the evidence shows no threshold safe (yet)
    samples: int  # shadowed requests it was chosen from
    disagreements: int  # of those, answered by the student at the threshold and unlike the teacher
    upper_bound: float  # the disagreement's Clopper-Pearson bound at that look's level
    escalation_rate: float  # the fraction of those requests below the threshold
    look: int  # 0, 1, ...: which recomputation


class ThresholdSelector:
    """Takes (confidence, agreed) pairs as shadowed traffic yields them; chooses at each look."""

    def __init__(
        self, max_disagreement: float, confidence_level: float, step: float, min_samples: int
    ) -> None:
        self.max_disagreement = max_disagreement
        self.delta = 1.0 - confidence_level
        self.grid = grid(step)
        self._min_samples = min_samples
        self._cells = [0] * len(self.grid)  # requests whose confidence falls in each cell
        self._wrong_cells = [0] * len(self.grid)  # of those, unlike the teacher's answer
        self.samples = 0
        self.looks = 0
        self.choice: Choice | None = None

    def observe(self, confidence: float, agreed: bool) -> Choice | None:
        """One shadowed request; returns the new choice when this one completes a look."""
        cell = max(0, bisect.bisect_right(self.grid, confidence) - 1)  # largest grid <= it
        self._cells[cell] += 1
        self._wrong_cells[cell] += 0 if agreed else 1
        self.samples += 1
        if self.samples < self._min_samples * 2**self.looks:
            return None
        self.choice = self._choose(self.looks)
        self.looks += 1
        return self.choice

    def _choose(self, look: int) -> Choice:
        n, delta = self.samples, look_delta(look, self.delta)
        wrong_at, below = _suffix_sums(self._wrong_cells), _suffix_sums(self._cells)
        index = fixed_sequence(wrong_at, n, self.max_disagreement, delta)
        shown = len(self.grid) - 1 if index is None else index  # the evidence at the top if none
        return Choice(
            threshold=None if index is None else self.grid[index],
            samples=n,
            disagreements=wrong_at[shown],
            upper_bound=upper_bound(wrong_at[shown], n, delta),
            escalation_rate=(n - below[shown]) / n,
            look=look,
        )


def _suffix_sums(cells: list[int]) -> list[int]:
    """[sum(cells[i:]) for each i]: the requests at or above each grid value."""
    sums, total = [0] * len(cells), 0
    for i in range(len(cells) - 1, -1, -1):
        total += cells[i]
        sums[i] = total
    return sums
