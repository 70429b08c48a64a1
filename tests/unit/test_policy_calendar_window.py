"""Working calendars, the contact window (DST, several zones) and zone resolution."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dispatcher.config import load_config
from dispatcher.domain import Case
from dispatcher.policy import (
    NoLegalInstantError,
    WorkingCalendar,
    is_legal,
    next_legal_instant,
    resolve_zones,
)

CONFIG = load_config(Path(__file__).resolve().parents[2] / "config" / "dispatcher.toml")
CN = CONFIG.jurisdictions["cn"]
US = CONFIG.jurisdictions["us"]
CN_CAL = WorkingCalendar.for_profile(CN)
US_CAL = WorkingCalendar.for_profile(US)
SH = ZoneInfo("Asia/Shanghai")
LA = ZoneInfo("America/Los_Angeles")
NY = ZoneInfo("America/New_York")
SHANGHAI = ("Asia/Shanghai",)
US_ALL = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")


def d(y: int, m: int, day: int) -> dt.date:
    return dt.date(y, m, day)


# -- calendar ----------------------------------------------------------------------


@pytest.mark.parametrize("day", range(1, 8))
def test_national_day_week_2026_is_not_working(day: int) -> None:
    assert not CN_CAL.is_working_day(d(2026, 10, day))


def test_after_national_day_thu_8_oct_2026_is_a_working_day_per_holidays() -> None:
    # holidays 0.109 lists 1-7 Oct off (5 Oct observed, 6-7 Oct substituted from
    # 20 Sep and 10 Oct); Thu 8 Oct is an ordinary working day.
    assert CN_CAL.is_working_day(d(2026, 10, 8))
    assert CN_CAL.is_working_day(d(2026, 10, 9))


def test_adjusted_working_saturday_10_oct_2026_is_working_and_the_sunday_is_not() -> None:
    assert CN_CAL.is_working_day(d(2026, 10, 10))
    assert not CN_CAL.is_working_day(d(2026, 10, 11))


@pytest.mark.parametrize("adjusted", [d(2026, 1, 4), d(2026, 2, 14), d(2026, 2, 28), d(2026, 5, 9), d(2026, 9, 20)])
def test_other_2026_adjusted_working_weekend_days(adjusted: dt.date) -> None:
    assert adjusted.weekday() >= 5
    assert CN_CAL.is_working_day(adjusted)


def test_ordinary_weekend_and_weekday() -> None:
    assert not CN_CAL.is_working_day(d(2026, 12, 12))  # Sat
    assert not CN_CAL.is_working_day(d(2026, 12, 13))  # Sun
    assert CN_CAL.is_working_day(d(2026, 12, 14))  # Mon


def test_holiday_names_and_descriptions() -> None:
    assert CN_CAL.holiday_name(d(2026, 10, 1)) == "National Day"
    assert CN_CAL.describe(d(2026, 5, 2)) == "Sat 2026-05-02 is a statutory holiday in CN (Labor Day)"
    assert CN_CAL.describe(d(2026, 12, 12)) == "Sat 2026-12-12 is a weekend day in CN"
    assert CN_CAL.describe(d(2026, 10, 10)) == "Sat 2026-10-10 is a working day in CN"


def test_us_profile_contacts_every_day_including_holidays() -> None:
    assert US_CAL.is_working_day(d(2026, 12, 25))
    assert US_CAL.is_working_day(d(2026, 7, 4))
    assert US_CAL.is_working_day(d(2026, 12, 13))


def test_extra_holidays_and_extra_working_days_override_the_package() -> None:
    profile = CN.model_copy(
        update={"extra_holidays": [d(2026, 10, 9)], "extra_working_days": [d(2026, 10, 11), d(2027, 1, 2)]}
    )
    cal = WorkingCalendar.for_profile(profile)
    assert cal is not CN_CAL
    assert not cal.is_working_day(d(2026, 10, 9))
    assert cal.is_working_day(d(2026, 10, 11))
    assert cal.is_working_day(d(2027, 1, 2))
    assert not cal.is_working_day(d(2026, 10, 1))
    assert cal.describe(d(2026, 10, 9)) == "Fri 2026-10-09 is a holiday by the profile's extra_holidays"
    # the shared calendar of the shipped profile is unaffected
    assert CN_CAL.is_working_day(d(2026, 10, 9))


def test_a_date_in_both_override_lists_is_a_holiday() -> None:
    both = d(2026, 12, 14)
    cal = WorkingCalendar("CN", "working", [both], [both])
    assert not cal.is_working_day(both)


def test_extra_holidays_apply_to_an_all_days_profile() -> None:
    cal = WorkingCalendar("US", "all", [d(2026, 12, 24)], [])
    assert not cal.is_working_day(d(2026, 12, 24))
    assert cal.is_working_day(d(2026, 12, 25))


def test_calendar_is_shared_per_profile_settings() -> None:
    assert WorkingCalendar.for_profile(CN) is CN_CAL
    assert WorkingCalendar.for_profile(CN.model_copy()) is CN_CAL


def test_unknown_country_code_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="country code"):
        WorkingCalendar("XX", "working").is_working_day(d(2026, 1, 5))


# -- window, China -----------------------------------------------------------------


def sh(y: int, m: int, day: int, h: int, mi: int = 0, s: int = 0, us: int = 0) -> dt.datetime:
    return dt.datetime(y, m, day, h, mi, s, us, tzinfo=SH)


def test_adjusted_working_saturday_is_legal() -> None:
    assert is_legal(sh(2026, 10, 10, 10), SHANGHAI, CN, CN_CAL)


def test_national_day_defers_to_thu_8_oct() -> None:
    now = sh(2026, 10, 3, 10)
    assert not is_legal(now, SHANGHAI, CN, CN_CAL)
    assert next_legal_instant(now, SHANGHAI, CN, CN_CAL).isoformat() == "2026-10-08T09:00:00+08:00"


def test_ordinary_weekend_defers_to_monday() -> None:
    nxt = next_legal_instant(sh(2026, 10, 11, 10), SHANGHAI, CN, CN_CAL)
    assert nxt.isoformat() == "2026-10-12T09:00:00+08:00"


def test_evening_before_the_adjusted_saturday_defers_to_saturday_morning() -> None:
    nxt = next_legal_instant(sh(2026, 10, 9, 21, 30), SHANGHAI, CN, CN_CAL)
    assert nxt.isoformat() == "2026-10-10T09:00:00+08:00"


def test_2130_defers_to_next_day_0900() -> None:
    now = sh(2026, 12, 8, 21, 30)
    assert not is_legal(now, SHANGHAI, CN, CN_CAL)
    assert next_legal_instant(now, SHANGHAI, CN, CN_CAL).isoformat() == "2026-12-09T09:00:00+08:00"


def test_window_bounds_are_half_open() -> None:
    assert not is_legal(sh(2026, 12, 8, 21, 0), SHANGHAI, CN, CN_CAL)
    assert is_legal(sh(2026, 12, 8, 20, 59), SHANGHAI, CN, CN_CAL)
    assert is_legal(sh(2026, 12, 8, 20, 59, 59, 999999), SHANGHAI, CN, CN_CAL)
    assert is_legal(sh(2026, 12, 8, 9, 0), SHANGHAI, CN, CN_CAL)
    assert not is_legal(sh(2026, 12, 8, 8, 59, 59), SHANGHAI, CN, CN_CAL)


def test_legal_now_is_its_own_next_legal_instant() -> None:
    now = sh(2026, 12, 8, 10, 15, 7)
    assert next_legal_instant(now, SHANGHAI, CN, CN_CAL) == now


def test_instants_in_other_offsets_are_judged_in_the_debtor_zone() -> None:
    # 01:30 UTC is 09:30 in Shanghai
    assert is_legal(dt.datetime(2026, 12, 8, 1, 30, tzinfo=dt.UTC), SHANGHAI, CN, CN_CAL)
    assert not is_legal(dt.datetime(2026, 12, 8, 0, 30, tzinfo=dt.UTC), SHANGHAI, CN, CN_CAL)


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        is_legal(dt.datetime(2026, 12, 8, 10), SHANGHAI, CN, CN_CAL)


# -- window, US DST ----------------------------------------------------------------


def test_spring_forward_los_angeles() -> None:
    now = dt.datetime(2026, 3, 8, 7, 59, tzinfo=LA)
    assert now.utcoffset() == dt.timedelta(hours=-7)
    assert not is_legal(now, ("America/Los_Angeles",), US, US_CAL)
    nxt = next_legal_instant(now, ("America/Los_Angeles",), US, US_CAL)
    assert nxt.isoformat() == "2026-03-08T08:00:00-07:00"
    assert is_legal(nxt, ("America/Los_Angeles",), US, US_CAL)


def test_spring_forward_the_night_before_waits_for_0800_pdt() -> None:
    # 21:30 PST on Sat 7 Mar; the next opening is after the 02:00 jump
    now = dt.datetime(2026, 3, 7, 21, 30, tzinfo=LA)
    nxt = next_legal_instant(now, ("America/Los_Angeles",), US, US_CAL)
    assert nxt.isoformat() == "2026-03-08T08:00:00-07:00"
    # 10.5 h on the wall clock, 9.5 h of real time: the skipped hour is not waited for
    assert nxt.timestamp() - now.timestamp() == 9.5 * 3600


def test_fall_back_los_angeles() -> None:
    zones = ("America/Los_Angeles",)
    # 07:00 PST = 15:00 UTC: outside; 08:00 PST = 16:00 UTC: inside
    assert not is_legal(dt.datetime(2026, 11, 1, 15, 0, tzinfo=dt.UTC), zones, US, US_CAL)
    assert not is_legal(dt.datetime(2026, 11, 1, 15, 59, tzinfo=dt.UTC), zones, US, US_CAL)
    assert is_legal(dt.datetime(2026, 11, 1, 16, 0, tzinfo=dt.UTC), zones, US, US_CAL)
    # both occurrences of 01:30 are outside
    assert not is_legal(dt.datetime(2026, 11, 1, 1, 30, tzinfo=LA), zones, US, US_CAL)
    assert not is_legal(dt.datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=LA), zones, US, US_CAL)
    nxt = next_legal_instant(dt.datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=LA), zones, US, US_CAL)
    assert nxt.isoformat() == "2026-11-01T08:00:00-08:00"
    # the evening closes at 21:00 PST = 05:00 UTC next day
    assert is_legal(dt.datetime(2026, 11, 2, 4, 59, tzinfo=dt.UTC), zones, US, US_CAL)
    assert not is_legal(dt.datetime(2026, 11, 2, 5, 0, tzinfo=dt.UTC), zones, US, US_CAL)


def test_fall_back_new_york_morning() -> None:
    zones = ("America/New_York",)
    nxt = next_legal_instant(dt.datetime(2026, 11, 1, 7, 30, tzinfo=NY), zones, US, US_CAL)
    assert nxt.isoformat() == "2026-11-01T08:00:00-05:00"


# -- several zones -----------------------------------------------------------------


def test_unknown_us_zone_uses_the_intersection_of_eastern_to_pacific() -> None:
    now = dt.datetime(2026, 6, 15, 8, 30, tzinfo=NY)  # 05:30 in Los Angeles
    assert not is_legal(now, US_ALL, US, US_CAL)
    nxt = next_legal_instant(now, US_ALL, US, US_CAL)
    assert nxt.isoformat() == "2026-06-15T11:00:00-04:00"  # 08:00 Pacific
    assert nxt.astimezone(LA).hour == 8


def test_window_closes_when_eastern_reaches_2100() -> None:
    assert is_legal(dt.datetime(2026, 6, 15, 20, 59, tzinfo=NY), US_ALL, US, US_CAL)
    closing = dt.datetime(2026, 6, 15, 21, 0, tzinfo=NY)  # 18:00 in Los Angeles
    assert not is_legal(closing, US_ALL, US, US_CAL)
    assert next_legal_instant(closing, US_ALL, US, US_CAL).isoformat() == "2026-06-16T11:00:00-04:00"


def test_intersection_across_dates_needs_a_working_day_in_every_zone() -> None:
    zones = ("Asia/Shanghai", "America/Los_Angeles")
    # Mon 10:00 Shanghai is Sun 18:00 in LA: a weekend there under the CN calendar
    assert not is_legal(sh(2026, 12, 7, 10), zones, CN, CN_CAL)
    # Tue 10:00 Shanghai = Mon 18:00 LA: both working, both inside
    assert is_legal(sh(2026, 12, 8, 10), zones, CN, CN_CAL)
    # Tue 13:00 Shanghai = Mon 21:00 LA: LA closed
    assert not is_legal(sh(2026, 12, 8, 13), zones, CN, CN_CAL)
    assert next_legal_instant(sh(2026, 12, 7, 10), zones, CN, CN_CAL).isoformat() == "2026-12-08T09:00:00+08:00"


def test_zones_whose_windows_never_overlap_raise_a_clear_error() -> None:
    # 12 h apart with a 12 h window (09:00-21:00): one opens exactly when the other closes
    with pytest.raises(NoLegalInstantError, match="never overlap"):
        next_legal_instant(dt.datetime(2026, 6, 1, tzinfo=dt.UTC), ("Etc/UTC", "Etc/GMT-12"), CN, CN_CAL)


def test_every_day_a_holiday_raises_a_clear_error() -> None:
    every_day = [dt.date(2026, 1, 1) + dt.timedelta(days=k) for k in range(800)]
    profile = US.model_copy(update={"extra_holidays": every_day})
    cal = WorkingCalendar.for_profile(profile)
    with pytest.raises(NoLegalInstantError, match="no working day"):
        next_legal_instant(dt.datetime(2026, 6, 1, tzinfo=dt.UTC), ("America/New_York",), profile, cal)


# -- zone resolution ---------------------------------------------------------------


def make_case(jurisdiction: str = "us", phone: str | None = None, timezone: str | None = None) -> Case:
    return Case(
        case_id="Z1", name="Pat Doe", jurisdiction=jurisdiction, locale="en-US", currency="USD",
        principal=Decimal("10"), interest=Decimal("0"), penalty=Decimal("0"), fees=Decimal("0"),
        amount_due=Decimal("10"), due_date=d(2026, 1, 1), timezone=timezone, phone=phone,
    )


def test_us_310_number_resolves_to_los_angeles() -> None:
    assert resolve_zones(make_case(phone="+13105550100"), US) == ("America/Los_Angeles",)


def test_us_212_number_resolves_to_new_york() -> None:
    assert resolve_zones(make_case(phone="+12125550100"), US) == ("America/New_York",)


def test_chinese_mobile_resolves_to_shanghai() -> None:
    assert resolve_zones(make_case("cn", phone="+8613812345678"), CN) == ("Asia/Shanghai",)


def test_explicit_zone_wins_over_the_phone() -> None:
    case = make_case(phone="+13105550100", timezone="America/Chicago")
    assert resolve_zones(case, US) == ("America/Chicago",)


def test_explicit_unknown_zone_is_an_error() -> None:
    with pytest.raises(ValueError, match="IANA"):
        resolve_zones(make_case(timezone="Mars/Olympus"), US)


@pytest.mark.parametrize("phone", [None, "+15555550100", "not a number", "+18005550100"])
def test_unplaceable_numbers_fall_back_to_the_profile_zones_in_config_order(phone: str | None) -> None:
    # +1 555: Etc/Unknown; +1 800 toll-free: only the whole NANP list
    assert resolve_zones(make_case(phone=phone), US) == US_ALL
