"""The statistics of the variant experiments, from scipy (not hand-written):
95 % Wilson score intervals and Pearson's chi-squared test of independence."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: significance level of the experiments
ALPHA = 0.05


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """The Wilson score interval of successes/trials (no continuity correction);
    None without trials."""
    if trials <= 0:
        return None
    from scipy.stats import binomtest  # scipy takes a second to import: only when a report is built

    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True, slots=True)
class ChiSquared:
    statistic: float
    p_value: float
    dof: int


def chi_squared(counts: Sequence[tuple[int, int]]) -> ChiSquared | None:
    """Pearson's chi-squared test over a k x 2 table of (successes, trials) per arm, no
    Yates correction (the same test for 2 arms as for 5). None when it is undefined:
    fewer than 2 arms with trials, or no success (or no failure) at all."""
    table = [(s, n - s) for s, n in counts if n > 0]
    if len(table) < 2 or sum(s for s, _ in table) == 0 or sum(f for _, f in table) == 0:
        return None
    from scipy.stats import chi2_contingency

    result = chi2_contingency(table, correction=False)
    p_value = float(result.pvalue)
    if math.isnan(p_value):
        return None
    return ChiSquared(float(result.statistic), p_value, int(result.dof))
