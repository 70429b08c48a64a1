"""The report's period: calendar dates in the organisation's zone, as instants and as
day numbers (days since 1970-01-01), which is how the SQL compares dates portably."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

EPOCH = dt.date(1970, 1, 1)


class PeriodError(ValueError):
    """A period that cannot be reported on; the message says what to give instead."""


def day_number(day: dt.date) -> int:
    return (day - EPOCH).days


def from_day_number(number: int) -> dt.date:
    return EPOCH + dt.timedelta(days=number)


@dataclass(frozen=True, slots=True)
class Period:
    """`since` .. `until`, both included, dates in `zone` (`organisation.timezone`)."""

    since: dt.date
    until: dt.date
    zone: str

    def __post_init__(self) -> None:
        if self.since > self.until:
            raise PeriodError(f"--since {self.since} is after --until {self.until}; give since <= until")

    @property
    def since_at(self) -> dt.datetime:
        """The first instant of the period (00:00 of `since` in the zone), UTC."""
        return dt.datetime.combine(self.since, dt.time(0), tzinfo=ZoneInfo(self.zone)).astimezone(dt.UTC)

    @property
    def until_at(self) -> dt.datetime:
        """The first instant after the period (00:00 of the day after `until`), UTC."""
        after = self.until + dt.timedelta(days=1)
        return dt.datetime.combine(after, dt.time(0), tzinfo=ZoneInfo(self.zone)).astimezone(dt.UTC)

    @property
    def since_day(self) -> int:
        return day_number(self.since)

    @property
    def until_day(self) -> int:
        return day_number(self.until)

    @property
    def offset_seconds(self) -> int:
        """The zone's UTC offset at the end of the period. SQLite has no time-zone rules,
        so there an instant's date uses this one offset (an hour off across a DST change
        inside the period); PostgreSQL applies the zone's rules."""
        offset = self.until_at.astimezone(ZoneInfo(self.zone)).utcoffset()
        return int(offset.total_seconds()) if offset else 0


def resolve_period(since: dt.date | None, until: dt.date | None, zone: str, now: dt.datetime,
                   first_day: dt.date | None) -> Period:
    """Defaults: `until` is today in the zone, `since` the first day with data (or `until`)."""
    today = now.astimezone(ZoneInfo(zone)).date()
    end = until or today
    start = since or min(first_day or end, end)
    return Period(start, end, zone)
