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

Trust (SPEC 12): a profile lists `official_years`, the years whose schedule the
operator checked against the official notice. For a working-day profile any other year
is *estimated*: still decided (the package's statutory days plus the overrides), but
`years_used` records every year a decision consulted, so the commands can warn once
per profile and year and `/metrics` can show it. `year_days` lists a year's exceptions
with their source: `official`, `estimated` or `config` (an operator override).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import holidays

if TYPE_CHECKING:
    from dispatcher.config import Jurisdiction

_WEEKDAY = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def format_day(day: dt.date) -> str:
    """`Sat 2026-05-02`: the form used in decision details."""
    return f"{_WEEKDAY[day.weekday()]} {day.isoformat()}"


Source = Literal["official", "estimated", "config"]


@dataclass(frozen=True, slots=True)
class CalendarDay:
    """One exception of a year: a weekday without contact or a weekend day with it."""

    date: dt.date
    working: bool
    name: str
    source: Source

    def as_json(self) -> dict[str, object]:
        """The contract shape of `dispatcher calendar --format json` (SPEC 12)."""
        return {"date": self.date.isoformat(), "working": self.working, "name": self.name, "source": self.source}


class WorkingCalendar:
    """Working days of one profile; cached per (profile calendar settings, year)."""

    def __init__(
        self,
        code: str,
        days: str = "working",
        extra_holidays: tuple[dt.date, ...] | list[dt.date] = (),
        extra_working_days: tuple[dt.date, ...] | list[dt.date] = (),
        official_years: tuple[int, ...] | list[int] | frozenset[int] = (),
    ) -> None:
        if days not in ("working", "all"):
            raise ValueError(f'days must be "working" or "all", not {days!r}')
        self.code = code
        self.days = days
        self.official_years = frozenset(official_years)
        #: years whose working days a decision consulted (each loaded once)
        self.years_used: set[int] = set()
        self._extra_holidays = frozenset(d.toordinal() for d in extra_holidays)
        self._extra_working = frozenset(d.toordinal() for d in extra_working_days)
        self._working: dict[int, bool] = {}
        #: years looked at by `is_working_day_unrecorded` only
        self._unrecorded: dict[int, dict[int, bool]] = {}
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
            tuple(sorted(profile.official_years)),
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

    def is_working_day_unrecorded(self, day: dt.date) -> bool:
        """`is_working_day` that does not count as a decision's use of the year
        (`years_used`): for dates that decide no contact, e.g. when a task is due."""
        ordinal = day.toordinal()
        known = self._working.get(ordinal)
        if known is not None:
            return known
        year = self._unrecorded.get(day.year)
        if year is None:
            year = self._unrecorded[day.year] = self._compute_year(day.year)
        return year[ordinal]

    def is_estimated_year(self, year: int) -> bool:
        """True when `year`'s working days are an estimate: a working-day profile whose
        operator has not marked the year official (SPEC 12)."""
        return self.days == "working" and year not in self.official_years

    def estimated_years_used(self) -> list[int]:
        """The estimated years decisions have consulted so far, sorted."""
        return sorted(y for y in self.years_used if self.is_estimated_year(y))

    def source_of(self, day: dt.date) -> Source:
        """Where `day`'s answer comes from: an operator override (`config`), a year the
        operator marked official, or the package's estimate."""
        ordinal = day.toordinal()
        if ordinal in self._extra_holidays or ordinal in self._extra_working or self.days == "all":
            return "config"
        return "estimated" if self.is_estimated_year(day.year) else "official"

    def year_days(self, year: int) -> list[CalendarDay]:
        """Every non-working weekday and every working weekend day of `year`, in order.
        Does not count as a decision's use of the year (`years_used`)."""
        out = []
        for ordinal, working in sorted(self._compute_year(year).items()):
            day = dt.date.fromordinal(ordinal)
            if working == (day.weekday() >= 5):  # a weekday off or a weekend day on
                out.append(CalendarDay(day, working, self._name(day, working), self.source_of(day)))
        return out

    def _name(self, day: dt.date, working: bool) -> str:
        ordinal = day.toordinal()
        if not working and ordinal in self._extra_holidays:
            return f"holiday (extra_holidays){': ' + n if (n := self.holiday_name(day)) else ''}"
        if working and ordinal in self._extra_working:
            return "working day (extra_working_days)"
        if self.days == "all":
            return 'contact day (days = "all")'
        if working:
            return "adjusted working day"
        return self.holiday_name(day) or "day off"

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
        self.years_used.add(year)
        self._working.update(self._compute_year(year))

    def _compute_year(self, year: int) -> dict[int, bool]:
        first = dt.date(year, 1, 1).toordinal()
        last = dt.date(year, 12, 31).toordinal()
        working: dict[int, bool] = {}
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
        return working


_CALENDARS: dict[tuple[object, ...], WorkingCalendar] = {}
