"""Penalty explanations: exact sentences for worked examples, both locales."""

from __future__ import annotations

import datetime as dt
import re
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.templates import penalty_explanation
from dispatcher.testing import sample_case

TODAY = dt.date(2026, 12, 7)


def cn_case(**kw: object):
    return sample_case("cn", today=TODAY, **kw)


def us_case(**kw: object):
    return sample_case("us", today=TODAY, **kw)


# -- overdue, with a daily rate ------------------------------------------------------


def test_worked_example_zh_cn() -> None:
    # ¥10,000.00 at 0.05 % a day for 45 days = ¥225.00
    case = cn_case(dpd=45)
    assert case.principal == Decimal("10000.00") and case.penalty_rate_daily == Decimal("0.0005")
    assert penalty_explanation(case, "zh-CN", TODAY) == "逾期罚息：逾期本金¥10,000.00×日罚息率0.05%×45天=¥225.00。"


def test_worked_example_en_us_in_yuan() -> None:
    # babel marks a foreign currency: CN¥ in en-US.
    assert penalty_explanation(cn_case(dpd=45), "en-US", TODAY) == (
        "Late charges accrue at 0.05% of the overdue principal per day:"
        " CN¥10,000.00 x 0.05% x 45 days = CN¥225.00."
    )


def test_worked_example_en_us_in_dollars() -> None:
    case = us_case(dpd=45, principal=Decimal("10000.00"))
    assert penalty_explanation(case, "en-US", TODAY) == (
        "Late charges accrue at 0.05% of the overdue principal per day:"
        " $10,000.00 x 0.05% x 45 days = $225.00."
    )
    assert penalty_explanation(case, "zh-CN", TODAY) == (
        "逾期罚息：逾期本金US$10,000.00×日罚息率0.05%×45天=US$225.00。"
    )


def test_english_uses_a_gsm7_multiplication_sign() -> None:
    # "×" is not in GSM-7: it would force every English SMS into UCS-2.
    assert "×" not in penalty_explanation(us_case(dpd=45), "en-US", TODAY)


def test_rounds_half_up_to_the_cent_and_says_1_day() -> None:
    # 250.00 x 0.0005 x 1 = 0.125 -> 0.13 (half-even would give 0.12)
    case = us_case(dpd=1, principal=Decimal("250.00"))
    assert penalty_explanation(case, "en-US", TODAY) == (
        "Late charges accrue at 0.05% of the overdue principal per day: $250.00 x 0.05% x 1 day = $0.13."
    )
    assert penalty_explanation(case, "zh-CN", TODAY) == "逾期罚息：逾期本金US$250.00×日罚息率0.05%×1天=US$0.13。"


def test_odd_rates_are_printed_exactly() -> None:
    case = cn_case(dpd=100, principal=Decimal("12345.67"), penalty_rate_daily=Decimal("0.000333"))
    # 12345.67 x 0.000333 x 100 = 411.110811 -> 411.11
    assert penalty_explanation(case, "zh-CN", TODAY) == "逾期罚息：逾期本金¥12,345.67×日罚息率0.0333%×100天=¥411.11。"
    case = cn_case(dpd=10, penalty_rate_daily=Decimal("0.001"))
    assert "0.1%" in penalty_explanation(case, "zh-CN", TODAY)


def test_spoken_form_for_voice() -> None:
    assert penalty_explanation(us_case(dpd=45), "en-US", TODAY, spoken=True) == (
        "Late charges accrue at 0.05% of the overdue principal per day:"
        " $2,400.00 times 0.05% times 45 days comes to $54.00."
    )
    assert penalty_explanation(cn_case(dpd=45), "zh-CN", TODAY, spoken=True) == (
        "逾期罚息按逾期本金¥10,000.00乘以日罚息率0.05%，再乘以45天计算，共¥225.00。"
    )


# -- overdue, no rate: the lender's figures -------------------------------------------


def test_without_rate_states_the_lenders_interest_and_charges() -> None:
    assert penalty_explanation(cn_case(dpd=45, with_rate=False), "zh-CN", TODAY) == (
        "应还金额含利息¥120.00、逾期罚息¥150.00，按您的合同约定计算。"
    )
    assert penalty_explanation(us_case(dpd=45, with_rate=False), "en-US", TODAY) == (
        "The amount due includes interest of $36.00 and late charges of $35.00, calculated under your agreement."
    )


def test_without_rate_names_fees_when_there_are_any() -> None:
    fees = {"fees": Decimal("15.00")}
    assert penalty_explanation(cn_case(dpd=45, with_rate=False, **fees), "zh-CN", TODAY) == (
        "应还金额含利息¥120.00、逾期罚息¥150.00、费用¥15.00，按您的合同约定计算。"
    )
    assert penalty_explanation(us_case(dpd=45, with_rate=False, **fees), "en-US", TODAY) == (
        "The amount due includes interest of $36.00, late charges of $35.00 and fees of $15.00,"
        " calculated under your agreement."
    )


# -- not yet overdue: what will accrue -----------------------------------------------


def test_pre_due_with_rate_explains_the_daily_charge_to_come() -> None:
    # due 2026-12-10; 10,000.00 x 0.0005 = 5.00 a day
    assert penalty_explanation(cn_case(dpd=-3), "zh-CN", TODAY) == (
        "如2026年12月10日后仍未还款，将按本金每日0.05%（¥5.00）计收逾期罚息。"
    )
    assert penalty_explanation(us_case(dpd=-3), "en-US", TODAY) == (
        "If unpaid after December 10, 2026, late charges of 0.05% of the principal ($1.20) accrue per day."
    )


def test_pre_due_without_rate() -> None:
    assert penalty_explanation(cn_case(dpd=-3, with_rate=False), "zh-CN", TODAY) == (
        "如2026年12月10日后仍未还款，将按合同约定计收逾期罚息和利息。"
    )
    assert penalty_explanation(us_case(dpd=-3, with_rate=False), "en-US", TODAY) == (
        "If unpaid after December 10, 2026, late charges and interest may apply under your agreement."
    )


def test_due_today_is_still_pre_due() -> None:
    assert penalty_explanation(us_case(dpd=0), "en-US", TODAY) == (
        "If unpaid after December 7, 2026, late charges of 0.05% of the principal ($1.20) accrue per day."
    )


# -- purity -------------------------------------------------------------------------


def test_depends_only_on_its_arguments() -> None:
    case = cn_case(dpd=45)
    assert penalty_explanation(case, "zh-CN", TODAY) == penalty_explanation(case, "zh-CN", TODAY)
    later = penalty_explanation(case, "zh-CN", TODAY + dt.timedelta(days=1))
    assert "46天" in later and "¥230.00" in later


@given(
    principal=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("9999999.99"), places=2),
    rate=st.decimals(min_value=Decimal("0.00001"), max_value=Decimal("0.01"), places=5),
    dpd=st.integers(min_value=1, max_value=2000),
)
def test_the_stated_total_is_the_exact_half_up_product(principal: Decimal, rate: Decimal, dpd: int) -> None:
    case = us_case(dpd=dpd, principal=principal, penalty_rate_daily=rate)
    text = penalty_explanation(case, "en-US", TODAY)
    stated = Decimal(re.search(r"= \$([\d,]+\.\d\d)\.$", text).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert stated == (principal * rate * dpd).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_every_branch_names_its_figures_in_the_locale(locale: str) -> None:
    for case in (cn_case(dpd=45), cn_case(dpd=45, with_rate=False), cn_case(dpd=-3), cn_case(dpd=-3, with_rate=False)):
        text = penalty_explanation(case, locale, TODAY)
        assert text.endswith("。" if locale == "zh-CN" else ".")
