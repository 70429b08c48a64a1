"""SPEC 11: what the debtor owes now, and dates in the debtor's day (pure parts)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from dispatcher.config import load_config
from dispatcher.domain import Channel
from dispatcher.policy.zones import PersonDateError, days_past_due_at, parse_person_date, primary_zone
from dispatcher.templates import build_context, penalty_explanation
from dispatcher.testing import SAMPLE_PAYMENT_LINK, sample_case

CONFIG = load_config(Path(__file__).resolve().parents[2] / "config" / "dispatcher.toml")
TODAY = dt.date(2026, 12, 7)


def paid(case, amount: str):  # type: ignore[no-untyped-def]
    return dataclasses.replace(case, paid_total=Decimal(amount))


def context(case, channel: Channel, locale: str):  # type: ignore[no-untyped-def]
    return build_context(case, config=CONFIG, channel=channel, today=TODAY, payment_link=SAMPLE_PAYMENT_LINK,
                         opt_out="x", locale=locale,
                         unsubscribe_url="https://u.example/x" if channel is Channel.EMAIL else None)


def test_outstanding_is_amount_due_less_payments_never_negative() -> None:
    case = sample_case("cn", dpd=45, today=TODAY)  # 10,345.00
    assert case.outstanding == Decimal("10345.00")
    assert paid(case, "300.00").outstanding == Decimal("10045.00")
    assert paid(case, "20000.00").outstanding == Decimal("0.00")


@pytest.mark.parametrize("channel", list(Channel))
def test_every_amount_name_a_template_can_use_states_what_is_owed_now(channel: Channel) -> None:
    ctx = context(paid(sample_case("cn", dpd=45, today=TODAY), "300.00"), channel, "zh-CN")
    assert ctx["outstanding"] == ctx["amount_due"] == "¥10,045.00"
    assert (ctx["original_amount"], ctx["paid_total"], ctx["has_payments"]) == ("¥10,345.00", "¥300.00", True)
    unpaid = context(sample_case("cn", dpd=45, today=TODAY), channel, "zh-CN")
    assert unpaid["outstanding"] == "¥10,345.00" and unpaid["has_payments"] is False


def test_the_penalty_explanation_reconciles_the_payment() -> None:
    case = paid(sample_case("us", dpd=45, today=TODAY), "300.00")  # $2,400 principal, 0.05 %/day
    assert penalty_explanation(case, "en-US", TODAY) == (
        "Late charges accrue at 0.05% of the overdue principal per day: $2,400.00 x 0.05% x 45 days = $54.00."
        " Of $2,490.00 due, $300.00 is paid: $2,190.00 outstanding.")
    assert penalty_explanation(case, "en-US", TODAY, terse=True).endswith(" Less $300.00 paid.")
    assert penalty_explanation(case, "en-US", TODAY, spoken=True).endswith(
        " Of the $2,490.00 that was due, you have paid $300.00, so $2,190.00 is outstanding.")
    zh = paid(sample_case("cn", dpd=45, today=TODAY, with_rate=False), "345.00")
    assert penalty_explanation(zh, "zh-CN", TODAY) == (
        "应还金额含利息¥120.00、逾期罚息¥150.00，按您的合同约定计算。原应还¥10,270.00-已还¥345.00=尚欠¥9,925.00。")
    assert penalty_explanation(zh, "zh-CN", TODAY, terse=True).endswith("。已还¥345.00。")
    unpaid = sample_case("cn", dpd=45, today=TODAY)
    assert "已还" not in penalty_explanation(unpaid, "zh-CN", TODAY, terse=True)


# -- dates a person gives ---------------------------------------------------------------


def test_a_date_is_midnight_in_the_debtors_zone() -> None:
    la = parse_person_date("2026-12-10", "America/Los_Angeles")
    assert la.isoformat() == "2026-12-10T00:00:00-08:00"
    assert la.astimezone(dt.UTC).isoformat() == "2026-12-10T08:00:00+00:00"  # not 00:00 UTC (16:00 on the 9th)
    assert parse_person_date(" 2026-12-20 ", "Asia/Shanghai").isoformat() == "2026-12-20T00:00:00+08:00"
    # DST: the day's midnight in summer time
    assert parse_person_date("2026-07-01", "America/New_York").isoformat() == "2026-07-01T00:00:00-04:00"


def test_a_skipped_midnight_starts_the_day_at_its_first_real_minute() -> None:
    # Chile moves its clocks from 00:00 to 01:00 on 2026-09-06: 00:00 never happens there
    start = parse_person_date("2026-09-06", "America/Santiago")
    assert start.astimezone(dt.UTC) == dt.datetime(2026, 9, 6, 4, 0, tzinfo=dt.UTC)
    assert start.isoformat() == "2026-09-06T01:00:00-03:00"


def test_an_instant_with_an_offset_is_that_instant() -> None:
    assert parse_person_date("2026-12-10T09:30:00-05:00", "Asia/Shanghai") == dt.datetime(
        2026, 12, 10, 14, 30, tzinfo=dt.UTC)
    assert parse_person_date("2026-12-10T09:30:00Z", "Asia/Shanghai") == dt.datetime(
        2026, 12, 10, 9, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize("text", ["2026-12-10T09:30:00", "next tuesday", "2026-13-01", ""])
def test_anything_else_is_refused_with_what_to_write(text: str) -> None:
    with pytest.raises(PersonDateError, match="2026-12-20|offset"):
        parse_person_date(text, "Asia/Shanghai")


def test_days_past_due_on_the_debtors_calendar() -> None:
    due = dt.date(2026, 11, 28)
    # 20:00 on Wed 9 December in Los Angeles is already the 10th in UTC
    evening = dt.datetime(2026, 12, 10, 4, 0, tzinfo=dt.UTC)
    assert days_past_due_at(due, evening, "America/Los_Angeles") == 11
    assert days_past_due_at(due, evening, "UTC") == 12
    assert days_past_due_at(due, evening, "Asia/Shanghai") == 12


def test_primary_zone() -> None:
    assert primary_zone(("America/Los_Angeles", "America/New_York")) == "America/Los_Angeles"
    assert primary_zone((), CONFIG.jurisdictions["us"]) == "America/New_York"
    assert primary_zone(()) == "UTC"


def test_a_promise_lasts_to_the_end_of_the_promised_local_day_and_its_window_is_the_debtors() -> None:
    """One rule for a call, the debtor's page and the API: a promise by 12-10 in Shanghai
    lasts until 00:00 of 12-11 there (16:00 UTC on 12-10); in Los Angeles until 08:00 UTC
    on 12-11. The window counts the debtor's own dates; a call may promise today."""
    from dispatcher.policy.zones import promise_hold_until, promise_window

    day = dt.date(2026, 12, 10)
    assert promise_hold_until(day, "Asia/Shanghai") == dt.datetime(2026, 12, 10, 16, 0, tzinfo=dt.UTC)
    assert promise_hold_until(day, "America/Los_Angeles") == dt.datetime(2026, 12, 11, 8, 0, tzinfo=dt.UTC)
    today = dt.date(2026, 12, 7)
    assert promise_window(today, 7) == (dt.date(2026, 12, 8), dt.date(2026, 12, 14))
    assert promise_window(today, 7, first_day=0) == (today, dt.date(2026, 12, 14))
