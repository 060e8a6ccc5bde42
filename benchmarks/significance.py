"""Small-sample statistics for the benchmark reports: Student-t intervals and paired comparisons by seed.

Pure Python (no SciPy dependency): the t distribution's CDF through the regularised incomplete beta function
(Lentz's continued fraction), its quantile by bisection on the CDF.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of :func:`t_cdf` (bisection; ``0 < p < 1``)."""
    lo, hi = -1e4, 1e4
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with the half-width of its 95 % Student-t interval (``nan`` for ``n < 2``)."""

    n: int
    mean: float
    half: float

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half

    def fmt(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"{self.mean:.{digits}f} (n = {self.n})"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f}"


def interval(values: Sequence[float]) -> Interval:
    """Mean and 95 % t-interval half-width of ``values``."""
    n = len(values)
    if n == 0:
        return Interval(0, math.nan, math.nan)
    mean = sum(values) / n
    if n < 2:
        return Interval(1, mean, math.nan)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(n, mean, t_quantile(0.975, n - 1) * sd / math.sqrt(n))


@dataclass(frozen=True)
class Paired:
    """Paired difference ``a - b`` over the seeds both ran: mean, 95 % t-interval and two-sided p-value."""

    n: int
    diff: Interval
    p: float

    @property
    def separates(self) -> bool:
        """The 95 % interval of the difference excludes zero."""
        return self.n >= 2 and (self.diff.lo > 0 or self.diff.hi < 0)

    def fmt(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"n = {self.n}: no interval"
        return (f"{self.diff.mean:+.{digits}f} [{self.diff.lo:+.{digits}f}, {self.diff.hi:+.{digits}f}], "
                f"p = {self.p:.2g}")


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired:
    """Paired t statistics of ``a[seed] - b[seed]`` over the common seeds."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    iv = interval(diffs)
    if iv.n < 2:
        return Paired(iv.n, iv, math.nan)
    sd = iv.half / t_quantile(0.975, iv.n - 1) * math.sqrt(iv.n)
    if sd == 0.0:
        return Paired(iv.n, iv, 0.0 if iv.mean != 0 else 1.0)
    t = iv.mean / (sd / math.sqrt(iv.n))
    return Paired(iv.n, iv, 2.0 * (1.0 - t_cdf(abs(t), iv.n - 1)))


def comparison(a: str, b: str, stat: Paired, budget: str, quantity: str = "test Dice") -> str:
    """One sentence comparing ``a`` with ``b`` from the paired statistics: 'ahead' only when the 95 % interval of
    the paired difference excludes zero, otherwise 'no difference at this budget'."""
    if stat.n < 2:
        return f"`{a}` vs `{b}`: not compared ({stat.n} common seed{'s' if stat.n != 1 else ''})."
    detail = (f"paired difference in {quantity} {stat.diff.mean:+.3f}, 95 % CI [{stat.diff.lo:+.3f}, "
              f"{stat.diff.hi:+.3f}], p = {stat.p:.2g}, n = {stat.n} seeds")
    if not stat.separates:
        return f"`{a}` vs `{b}`: no difference at this budget ({budget}; {detail})."
    lead, trail = (a, b) if stat.diff.mean > 0 else (b, a)
    return f"`{lead}` is ahead of `{trail}` ({budget}; {detail})."
