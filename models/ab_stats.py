"""Click-rate statistics for A/B reports: Wilson intervals, Newcombe differences, the z-test.

Wilson's score interval rather than the normal (Wald) one: it stays inside [0, 1] and keeps its
coverage for the small rates and counts of click data (Wald collapses to a zero-width interval
at 0 clicks). The difference of two rates gets Newcombe's hybrid score interval (method 10,
built from the two Wilson intervals), and the two-sided two-proportion z-test with the pooled
rate gives its p-value. Plain functions on counts; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


def z_value(level: float = 0.95) -> float:
    """The two-sided normal quantile of a confidence `level` (1.96 for 0.95)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must be within (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def _check_counts(successes: int, trials: int, name: str = "") -> None:
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"{name}counts: need 0 ≤ successes ≤ trials, got {successes} of {trials}")


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate; (0, 1) when there are no trials."""
    _check_counts(successes, trials)
    if trials == 0:
        return 0.0, 1.0
    z = z_value(level)
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # exact at the ends: rounding must not push 0 clicks above a lower bound of 0
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def newcombe_interval(s1: int, n1: int, s2: int, n2: int, level: float = 0.95) -> tuple[float, float]:
    """Interval of the difference p2 − p1 (Newcombe's hybrid score method from Wilson intervals)."""
    _check_counts(s1, n1, "first ")
    _check_counts(s2, n2, "second ")
    if n1 == 0 or n2 == 0:
        return -1.0, 1.0
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson_interval(s1, n1, level)
    l2, u2 = wilson_interval(s2, n2, level)
    diff = p2 - p1
    return diff - math.hypot(p2 - l2, u1 - p1), diff + math.hypot(u2 - p2, p1 - l1)


def two_proportion_z_test(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p-value) of H0: p1 = p2 with the pooled rate; (0, 1) when undefined
    (no trials on a side, or both rates 0 or both 1)."""
    _check_counts(s1, n1, "first ")
    _check_counts(s2, n2, "second ")
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0.0:
        return 0.0, 1.0
    z = (s2 / n2 - s1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2.0))


@dataclass(frozen=True)
class RateComparison:
    """One variant's click rate with its interval, and its difference to the baseline variant."""

    clicks: int
    impressions: int
    rate: float
    low: float
    high: float
    diff: float  # rate − baseline's rate
    diff_low: float
    diff_high: float
    z: float
    p_value: float


def compare(clicks: int, impressions: int, base_clicks: int, base_impressions: int,
            level: float = 0.95) -> RateComparison:
    """Rate, Wilson interval, Newcombe difference interval and z-test against the baseline."""
    low, high = wilson_interval(clicks, impressions, level)
    rate = clicks / impressions if impressions else 0.0
    base = base_clicks / base_impressions if base_impressions else 0.0
    diff_low, diff_high = newcombe_interval(base_clicks, base_impressions, clicks, impressions, level)
    z, p = two_proportion_z_test(base_clicks, base_impressions, clicks, impressions)
    return RateComparison(clicks, impressions, rate, low, high, rate - base, diff_low, diff_high, z, p)
