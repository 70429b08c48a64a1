"""Working-day calendars per jurisdiction profile.

A `WorkingCalendar` answers "may a debtor be contacted on this local date at all?".
It is built from the profile's `calendar` (a `holidays` country code), its `days` mode
and the operator overrides `extra_holidays` / `extra_working_days`:

- ``days = "working"``: `holidays.is_working_day` semantics. China's adjusted working
  weekend days (e.g. Sat 2026-10-10) are working days, statutory holidays and their
  substituted days off are not.
- ``days = "all"``: every date is a working day (US Regulation F has no day rule).
- ``extra_holidays`` are never working days; ``extra_working_days`` always are. A date
  in both lists is treated as a holiday: when the configuration contradicts itself we
  choose not to contact.

The `holidays` data are loaded lazily, one year at a time, and every answer is cached
by proleptic ordinal, so the per-case cost is one dict lookup.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import holidays

if TYPE_CHECKING:
    from dispatcher.config import Jurisdiction

_WEEKDAY = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def format_day(day: dt.date) -> str:
    """`Sat 2026-05-02`: the form used in decision details."""
    return f"{_WEEKDAY[day.weekday()]} {day.isoformat()}"


class WorkingCalendar:
    """Working days of one profile; cached per (profile calendar settings, year)."""

    def __init__(
        self,
        code: str,
        days: str = "working",
        extra_holidays: tuple[dt.date, ...] | list[dt.date] = (),
        extra_working_days: tuple[dt.date, ...] | list[dt.date] = (),
    ) -> None:
        if days not in ("working", "all"):
            raise ValueError(f'days must be "working" or "all", not {days!r}')
        self.code = code
        self.days = days
        self._extra_holidays = frozenset(d.toordinal() for d in extra_holidays)
        self._extra_working = frozenset(d.toordinal() for d in extra_working_days)
        self._working: dict[int, bool] = {}
        self._years: dict[int, holidays.HolidayBase] = {}
        #: per-(zone, hours) contact windows built on this calendar (see `policy.window`)
        self.windows: dict[tuple[str, dt.time, dt.time], object] = {}

    @classmethod
    def for_profile(cls, profile: Jurisdiction) -> WorkingCalendar:
        """The shared, cached calendar for a profile's calendar settings."""
        key = (
            profile.calendar,
            profile.days,
            tuple(profile.extra_holidays),
            tuple(profile.extra_working_days),
        )
        cal = _CALENDARS.get(key)
        if cal is None:
            cal = _CALENDARS[key] = cls(*key)
        return cal

    def __repr__(self) -> str:
        return f"WorkingCalendar({self.code!r}, days={self.days!r})"

    # -- queries -------------------------------------------------------------------

    def is_working_ordinal(self, ordinal: int) -> bool:
        """`is_working_day` for a `date.toordinal()` value (the hot path)."""
        try:
            return self._working[ordinal]
        except KeyError:
            self._load_year(dt.date.fromordinal(ordinal).year)
            return self._working[ordinal]

    def is_working_day(self, day: dt.date) -> bool:
        """May a debtor under this profile be contacted on local date `day`?"""
        return self.is_working_ordinal(day.toordinal())

    def holiday_name(self, day: dt.date) -> str | None:
        """The `holidays` package's name for `day`, if it names one."""
        return self._country(day.year).get(day)

    def describe(self, day: dt.date) -> str:
        """Why `day` is (not) a working day, for an auditor."""
        ordinal = day.toordinal()
        if self.is_working_ordinal(ordinal):
            if ordinal in self._extra_working:
                return f"{format_day(day)} is a working day by the profile's extra_working_days"
            return f"{format_day(day)} is a working day in {self.code}"
        if ordinal in self._extra_holidays:
            return f"{format_day(day)} is a holiday by the profile's extra_holidays"
        name = self.holiday_name(day)
        if name:
            return f"{format_day(day)} is a statutory holiday in {self.code} ({name})"
        return f"{format_day(day)} is a weekend day in {self.code}"

    # -- loading -------------------------------------------------------------------

    def _country(self, year: int) -> holidays.HolidayBase:
        country = self._years.get(year)
        if country is None:
            try:
                country = holidays.country_holidays(self.code, years=year)
            except NotImplementedError:
                raise ValueError(
                    f"calendar {self.code!r} is not a country code the holidays package knows;"
                    " use e.g. CN or US"
                ) from None
            self._years[year] = country
        return country

    def _load_year(self, year: int) -> None:
        first = dt.date(year, 1, 1).toordinal()
        last = dt.date(year, 12, 31).toordinal()
        working = self._working
        if self.days == "all":
            for ordinal in range(first, last + 1):
                working[ordinal] = True
        else:
            country = self._country(year)
            for ordinal in range(first, last + 1):
                working[ordinal] = country.is_working_day(dt.date.fromordinal(ordinal))
        for ordinal in self._extra_working:
            if first <= ordinal <= last:
                working[ordinal] = True
        for ordinal in self._extra_holidays:
            if first <= ordinal <= last:
                working[ordinal] = False


_CALENDARS: dict[tuple[object, ...], WorkingCalendar] = {}
