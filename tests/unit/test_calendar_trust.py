"""Calendars you can trust (SPEC 12): official and estimated years, operator overrides,
the once-per-profile-and-year warning and the metrics gauge."""

from __future__ import annotations

import datetime as dt
import io
import logging
from pathlib import Path

import pytest

from dispatcher.config import Config, load_config
from dispatcher.policy import WorkingCalendar
from dispatcher.services.calendar_notice import (
    estimated_in_use,
    forget_warnings,
    metric_lines,
    warn_estimated,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = load_config(ROOT / "config" / "dispatcher.toml")


def with_cn(**update: object) -> Config:
    cn = SHIPPED.jurisdictions["cn"].model_copy(update=update)
    return SHIPPED.model_copy(update={"jurisdictions": {**SHIPPED.jurisdictions, "cn": cn}})


@pytest.fixture(autouse=True)
def _fresh() -> None:
    forget_warnings()


def test_shipped_cn_is_official_for_2025_and_2026_only() -> None:
    cal = WorkingCalendar(SHIPPED.jurisdictions["cn"].calendar, "working",
                          official_years=SHIPPED.jurisdictions["cn"].official_years)
    assert sorted(cal.official_years) == [2025, 2026]
    assert not cal.is_estimated_year(2026) and cal.is_estimated_year(2027) and cal.is_estimated_year(2024)
    assert WorkingCalendar("US", "all").is_estimated_year(2027) is False  # no day rule: nothing to estimate


def test_2026_lists_every_holiday_and_adjusted_working_day_as_official() -> None:
    days = WorkingCalendar("CN", "working", official_years=[2026]).year_days(2026)
    working_weekend = [d.date for d in days if d.working]
    assert working_weekend == [dt.date(2026, 1, 4), dt.date(2026, 2, 14), dt.date(2026, 2, 28), dt.date(2026, 5, 9),
                               dt.date(2026, 9, 20), dt.date(2026, 10, 10)]
    assert all(d.date.weekday() >= 5 for d in days if d.working)
    assert all(d.date.weekday() < 5 for d in days if not d.working)
    assert {d.source for d in days} == {"official"}
    labour = next(d for d in days if d.date == dt.date(2026, 5, 1))
    assert (labour.working, labour.name) == (False, "Labor Day")


def test_2027_is_estimated_with_no_adjusted_working_days() -> None:
    days = WorkingCalendar("CN", "working", official_years=[2025, 2026]).year_days(2027)
    assert {d.source for d in days} == {"estimated"}
    assert not any(d.working for d in days)  # the notice is not out: the package has none
    assert dt.date(2027, 2, 8) in {d.date for d in days}


def test_an_operator_applies_the_notice_and_marks_the_year_official() -> None:
    # e.g. the notice moves a day off to Thu 2027-02-11 and makes Sat 2027-02-13 a working day
    cal = WorkingCalendar("CN", "working", extra_holidays=[dt.date(2027, 2, 11)],
                          extra_working_days=[dt.date(2027, 2, 13)], official_years=[2025, 2026, 2027])
    days = {d.date: d for d in cal.year_days(2027)}
    assert days[dt.date(2027, 2, 11)].as_json() == {
        "date": "2027-02-11", "working": False, "name": "holiday (extra_holidays)", "source": "config"}
    assert days[dt.date(2027, 2, 13)].as_json() == {
        "date": "2027-02-13", "working": True, "name": "working day (extra_working_days)", "source": "config"}
    assert days[dt.date(2027, 2, 8)].source == "official"
    assert {d.source for d in days.values()} == {"official", "config"}
    assert cal.is_working_day(dt.date(2027, 2, 13)) and not cal.is_working_day(dt.date(2027, 2, 11))


def test_listing_a_year_is_not_a_decision_in_it() -> None:
    cal = WorkingCalendar("CN", "working", official_years=[2026])
    cal.year_days(2031)
    assert cal.years_used == set()
    cal.is_working_day(dt.date(2031, 3, 3))
    assert cal.estimated_years_used() == [2031]


def test_a_decision_in_an_estimated_year_warns_once_per_profile_and_year(caplog: pytest.LogCaptureFixture) -> None:
    config = with_cn(official_years=[2025, 2026], extra_working_days=[dt.date(2030, 1, 5)])  # a calendar of its own
    cal = WorkingCalendar.for_profile(config.jurisdictions["cn"])
    cal.is_working_day(dt.date(2026, 12, 30))
    assert ("cn", 2026) not in estimated_in_use(config)
    cal.is_working_day(dt.date(2030, 1, 4))
    stream = io.StringIO()
    with caplog.at_level(logging.WARNING, logger="dispatcher.calendar"):
        assert warn_estimated(config, stream) == [("cn", 2030)]
        cal.is_working_day(dt.date(2030, 6, 1))
        assert warn_estimated(config, stream) == []  # the same year: said already
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "profile cn, year 2030" in lines[0] and "official_years" in lines[0]
    assert [r.getMessage() for r in caplog.records if "year 2030" in r.getMessage()] == [lines[0][len("warning: "):]]
    cal.is_working_day(dt.date(2031, 6, 2))
    assert warn_estimated(config, stream) == [("cn", 2031)]


def test_metrics_gauge_per_profile_and_year() -> None:
    config = with_cn(official_years=[2025, 2026], extra_holidays=[dt.date(2029, 1, 2)])
    cal = WorkingCalendar.for_profile(config.jurisdictions["cn"])
    cal.is_working_day(dt.date(2029, 1, 3))
    lines = metric_lines(config, dt.datetime(2026, 12, 31, 17, 0, tzinfo=dt.UTC))  # 2027-01-01 in Shanghai
    assert "# TYPE dispatcher_calendar_estimated gauge" in lines
    assert 'dispatcher_calendar_estimated{profile="cn",year="2027"} 1' in lines
    assert 'dispatcher_calendar_estimated{profile="cn",year="2029"} 1' in lines
    assert not any('profile="us"' in line for line in lines)  # days = "all": nothing estimated
    official = metric_lines(config, dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    assert 'dispatcher_calendar_estimated{profile="cn",year="2026"} 0' in official
