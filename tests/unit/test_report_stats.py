"""The experiments' statistics against published and closed-form values."""

from __future__ import annotations

import math

import pytest

from dispatcher.reports.stats import chi_squared, wilson_interval


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion",
    # Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_the_published_table(k: int, n: int, low: float, high: float) -> None:
    interval = wilson_interval(k, n)
    assert interval is not None
    assert interval[0] == pytest.approx(low, abs=5e-5)
    assert interval[1] == pytest.approx(high, abs=5e-5)


def test_no_trials_no_interval() -> None:
    assert wilson_interval(0, 0) is None


def test_chi_squared_with_three_arms_matches_the_closed_form() -> None:
    # 2 degrees of freedom: p = exp(-x/2). Arms 30/100, 20/100, 10/100: expected 20 and 80
    # per arm; x = (100 + 0 + 100)/20 + (100 + 0 + 100)/80 = 12.5
    result = chi_squared([(30, 100), (20, 100), (10, 100)])
    assert result is not None
    assert result.statistic == pytest.approx(12.5)
    assert result.dof == 2
    assert result.p_value == pytest.approx(math.exp(-12.5 / 2), rel=1e-12)


def test_chi_squared_is_undefined_without_a_conversion_or_a_second_arm() -> None:
    assert chi_squared([(0, 50), (0, 60)]) is None
    assert chi_squared([(5, 50)]) is None
    assert chi_squared([(5, 50), (0, 0)]) is None
    assert chi_squared([(50, 50), (60, 60)]) is None
