"""Welch's t interval for the difference of two independent means, without scipy.

Table 1 compares each method with a reference row (DARTS, later also random sampling)
over a handful of seeds. Seeds of two configs are independent samples whose spreads need
not match, so the pooled-variance t test is the wrong tool: Welch's interval with the
Welch–Satterthwaite degrees of freedom is. scipy is not a dependency of this project, so
the Student t quantile is computed here: bisection on the regularized incomplete beta
function (continued fraction, Numerical Recipes' ``betacf``), exact to ~1e-12.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

_EPS = 1e-15
_TINY = 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) by the modified Lentz method (converges for x < (a+1)/(a+b+2))."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b  # the symmetry I_x(a,b) = 1 - I_{1-x}(b,a)


def _solve_rising(f, target: float) -> float:
    """The u in (0, 1) where ``f``, rising on (0, 1), reaches ``target``: 200 halvings reach
    double precision, and bisection cannot diverge the way Newton steps can in heavy tails."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-17:
            break
    return 0.5 * (lo + hi)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (df need not be an integer)."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The p-quantile of Student's t: solves t_cdf(t, df) = p.

    Bisection on x = df / (df + t²) in (0, 1), where the two-sided tail I_x(df/2, 1/2) rises
    monotonically from 0 to 1: 200 halvings reach double precision, and bisection cannot
    diverge the way Newton steps can in the heavy tails of df ≈ 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be positive, got {df}")
    if p == 0.5:
        return 0.0
    alpha = 2.0 * min(p, 1.0 - p)  # two-sided tail probability of |T| > t
    x = _solve_rising(lambda u: betainc(df / 2.0, 0.5, u), alpha)
    t = math.sqrt(df * (1.0 - x) / x)
    return t if p > 0.5 else -t


@dataclass(frozen=True)
class Diff:
    """mean(a) − mean(b) with a two-sided Welch interval; low/high/df are NaN when undefined (see reason)."""
    mean_diff: float
    low: float
    high: float
    df: float
    n_a: int
    n_b: int
    reason: str = ""  # why the interval is undefined; "" when it is defined

    @property
    def defined(self) -> bool:
        return not self.reason

    @property
    def verdict(self) -> str:
        """'lower'/'higher' when the interval excludes zero (a below/above b), else 'no difference shown'."""
        if not self.defined:
            return ""
        if self.high < 0:
            return "lower"
        if self.low > 0:
            return "higher"
        return "no difference shown"


def _mean_var(x: Sequence[float]) -> tuple[float, float]:
    """Mean and sample variance (ddof=1; NaN for fewer than 2 values)."""
    n = len(x)
    mean = sum(x) / n if n else math.nan
    var = sum((v - mean) ** 2 for v in x) / (n - 1) if n > 1 else math.nan
    return mean, var


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Diff:
    """Two-sided ``level`` interval for mean(a) − mean(b), variances not assumed equal.

    se² = s_a²/n_a + s_b²/n_b; df = se⁴ / ((s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1))
    (Welch–Satterthwaite); interval = diff ± t_{(1+level)/2, df} · se. Undefined (NaN bounds,
    a reason given) with fewer than 2 values in either group or no spread in both: there is
    then no estimate of the noise to set a width by."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    a, b = [float(v) for v in a], [float(v) for v in b]
    n_a, n_b = len(a), len(b)
    (mean_a, var_a), (mean_b, var_b) = _mean_var(a), _mean_var(b)
    diff = mean_a - mean_b
    nan = math.nan
    if min(n_a, n_b) < 2:
        return Diff(diff, nan, nan, nan, n_a, n_b, "fewer than 2 seeds in a group")
    if var_a == 0.0 and var_b == 0.0:
        return Diff(diff, nan, nan, nan, n_a, n_b, "no spread over seeds in either group")
    qa, qb = var_a / n_a, var_b / n_b
    se = math.sqrt(qa + qb)
    df = (qa + qb) ** 2 / (qa ** 2 / (n_a - 1) + qb ** 2 / (n_b - 1))
    half = t_ppf(0.5 + level / 2.0, df) * se
    return Diff(diff, diff - half, diff + half, df, n_a, n_b)


def f_cdf(x: float, d1: float, d2: float) -> float:
    """P(F <= x) for Fisher's F with (d1, d2) degrees of freedom: I_{d1 x / (d1 x + d2)}(d1/2, d2/2)."""
    if x <= 0:
        return 0.0
    return betainc(d1 / 2.0, d2 / 2.0, d1 * x / (d1 * x + d2))


def f_ppf(p: float, d1: float, d2: float) -> float:
    """The p-quantile of F(d1, d2), by bisection on u = d1 x / (d1 x + d2) in (0, 1), where
    the cdf I_u(d1/2, d2/2) rises monotonically (the same reasoning as ``t_ppf``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if not (d1 > 0 and d2 > 0):
        raise ValueError(f"degrees of freedom must be positive, got {d1}, {d2}")
    u = _solve_rising(lambda v: betainc(d1 / 2.0, d2 / 2.0, v), p)
    return d2 * u / (d1 * (1.0 - u))


@dataclass(frozen=True)
class Ratio:
    """s_a / s_b (ratio of sample standard deviations) with a two-sided interval; NaN bounds
    when undefined (see reason)."""
    ratio: float
    low: float
    high: float
    n_a: int
    n_b: int
    reason: str = ""

    @property
    def verdict(self) -> str:
        """'smaller'/'larger' spread than b when the interval excludes 1, else 'no difference shown'."""
        if self.reason:
            return ""
        if self.high < 1:
            return "smaller"
        if self.low > 1:
            return "larger"
        return "no difference shown"


def sd_ratio_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Ratio:
    """Two-sided ``level`` interval for σ_a / σ_b from the F distribution of s_a²/s_b² · σ_b²/σ_a²
    ~ F(n_a − 1, n_b − 1) (normal errors assumed): [r / sqrt(F_hi), r / sqrt(F_lo)] with
    F_hi, F_lo the (1 ± level)/2 quantiles. With 3 seeds per group (2 and 2 df) F_{.975} = 39,
    so only a ratio beyond ~6 in either direction can be shown."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    n_a, n_b = len(a), len(b)
    (_, var_a), (_, var_b) = _mean_var(a), _mean_var(b)
    nan = math.nan
    if min(n_a, n_b) < 2:
        return Ratio(nan, nan, nan, n_a, n_b, "fewer than 2 seeds in a group")
    if var_b == 0.0:
        return Ratio(nan, nan, nan, n_a, n_b, "no spread over seeds in the reference group")
    r = math.sqrt(var_a / var_b)
    tail = (1.0 - level) / 2.0
    f_hi, f_lo = f_ppf(1.0 - tail, n_a - 1, n_b - 1), f_ppf(tail, n_a - 1, n_b - 1)
    return Ratio(r, r / math.sqrt(f_hi), r / math.sqrt(f_lo), n_a, n_b)
