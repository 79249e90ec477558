"""Mean and 95 % confidence interval over seeds (Student t), paired differences, and verdicts."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Two-sided 95 % quantiles t_{0.975, df} for df = 1..30; above 30 a Cornish-Fisher expansion (error < 1e-4).
T975 = (12.7062047, 4.3026527, 3.1824463, 2.7764451, 2.5705818, 2.4469119, 2.3646243, 2.3060041, 2.2621572, 2.2281389,
        2.2009852, 2.1788128, 2.1603687, 2.1447867, 2.1314495, 2.1199053, 2.1098156, 2.1009220, 2.0930241, 2.0859634,
        2.0796138, 2.0738731, 2.0686576, 2.0638986, 2.0595386, 2.0555294, 2.0518305, 2.0484071, 2.0452296, 2.0422725)
Z975 = 1.959963985


def t_quantile(df: int) -> float:
    """t_{0.975} with `df` degrees of freedom: scipy when installed, else the table above."""
    if df < 1:
        return math.nan
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:
        pass
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass
class Summary:
    """n values summarised: mean, sample standard deviation and the 95 % CI of the mean (NaN when n < 2)."""

    n: int
    mean: float
    sd: float
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def mean_ci(values) -> Summary:
    xs = [float(v) for v in values if v == v]  # NaN dropped
    n = len(xs)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(xs) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


def paired_differences(a: dict, b: dict) -> list[float]:
    """a[k] - b[k] for every key (a seed) the two share, in key order."""
    return [a[k] - b[k] for k in sorted(set(a) & set(b))]


MIN_SEEDS = 3  # a claim that A beats B needs at least 3 seeds (with 2, one lucky seed decides)


def verdict(diff: Summary, expect: str = "higher") -> str:
    """'replicates' when the CI of the difference excludes 0 in the claimed direction, 'contradicts'
    when it excludes 0 the other way, 'no difference' when every seed's pair scored the same (a CI of
    width 0 around 0 is not noise: the two regimes behave alike), otherwise inconclusive with the
    numbers that make it so."""
    seeds = f"{diff.n} seed{'s' if diff.n != 1 else ''}"
    if diff.n < 2 or math.isnan(diff.lo):
        return f"inconclusive at this scale ({seeds}, no CI)"
    ci = f"CI [{diff.lo:+.3f}, {diff.hi:+.3f}]"
    if diff.n < MIN_SEEDS:
        return f"not yet a verdict ({seeds}, {ci}; a claim needs {MIN_SEEDS} seeds)"
    if diff.mean == 0 and diff.sd == 0:
        return f"no difference ({seeds}, every pair scored the same)"
    above, below = diff.lo > 0, diff.hi < 0
    if (above and expect == "higher") or (below and expect == "lower"):
        return "replicates"
    if above or below:
        return "contradicts"
    return f"inconclusive at this scale ({seeds}, {ci})"


def select_fraction(values: dict[float, float], better: str = "higher") -> float:
    """The fraction whose value is best in the metric's own direction; a tie goes to the later fraction."""
    sign = 1 if better == "higher" else -1
    return max(values, key=lambda f: (sign * values[f], f))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs (NaN with fewer than two distinct xs)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else math.nan
