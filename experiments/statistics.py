"""Summaries across seeds and the verdict between two arms. Plain Python, no Django and
no SciPy: Student's t quantiles come from the regularized incomplete beta function
(Numerical Recipes' continued fraction) and a bisection.

- `t_interval`: the mean of an arm's per-seed values with a 95% t-interval
  (mean ± t_{0.975, n−1} · s/√n); one seed gives no interval.
- `welch_difference`: mean(a) − mean(b) with Welch's interval (unequal variances,
  Welch–Satterthwaite degrees of freedom).
- `verdict`: a sentence from that difference: who beat whom by how much, or "no
  difference detectable at this budget" when the interval contains 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None
    """None when there are too few values for an interval."""
    high: float | None
    n: int

    @property
    def contains_zero(self) -> bool:
        return self.low is None or self.low <= 0.0 <= self.high

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.mean:.3f} (n={self.n}, no interval)"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 3e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T ≤ t) = p, for p in (0.5, 1)."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2.0


def sample_variance(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean across seeds with its t-interval."""
    if not values:
        raise ValueError("no values to summarize")
    n, mean = len(values), sum(values) / len(values)
    if n < 2:
        return Interval(mean, None, None, n)
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * math.sqrt(sample_variance(values) / n)
    return Interval(mean, mean - half, mean + half, n)


def welch_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """mean(a) − mean(b) with Welch's interval; n is the smaller sample's size."""
    difference = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Interval(difference, None, None, min(len(a), len(b)))
    share_a, share_b = sample_variance(a) / len(a), sample_variance(b) / len(b)
    standard_error = math.sqrt(share_a + share_b)
    if standard_error == 0.0:
        return Interval(difference, difference, difference, min(len(a), len(b)))
    df = (share_a + share_b) ** 2 / (share_a ** 2 / (len(a) - 1) + share_b ** 2 / (len(b) - 1))
    half = t_quantile(1 - (1 - confidence) / 2, df) * standard_error
    return Interval(difference, difference - half, difference + half, min(len(a), len(b)))


def verdict(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], what: str = "gold reward") -> str:
    """One sentence comparing two arms' per-seed values."""
    difference = welch_difference(a, b)
    if difference.low is None:
        return (f"{name_a} {difference.mean:+.3f} {what} vs {name_b}, with one seed per arm: "
                "no interval, run more seeds")
    if difference.contains_zero:
        return (f"no difference detectable at this budget: {name_a} − {name_b} = {difference.mean:+.3f} "
                f"[{difference.low:+.3f}, {difference.high:+.3f}] {what}")
    winner, loser, gap = (name_a, name_b, difference) if difference.mean > 0 else (
        name_b, name_a, Interval(-difference.mean, -difference.high, -difference.low, difference.n))
    return f"{winner} beat {loser} by {gap.mean:.3f} [{gap.low:.3f}, {gap.high:.3f}] {what}"
