"""Estimated calendars said out loud (SPEC 12).

A working-day profile's calendar for a year the operator has not marked official
(`official_years`) is an estimate: the `holidays` package computes the statutory days,
but the adjusted working days of a year whose official notice is not out are unknown.
Decisions in such a year still work; `plan`, `tick` and `run` warn once per profile and
year (per process), and `/metrics` shows `dispatcher_calendar_estimated{profile,year} 1`.

Which years count: those a decision consulted (`WorkingCalendar.years_used`) — in the
process that decided — and, for the metrics, the current year of each profile, so a
web process that never planned still shows what the next plan will rely on.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import TextIO

from dispatcher.config import Config
from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.policy.zones import local_date

log = logging.getLogger("dispatcher.calendar")
# The commands print the warning themselves; without a handler here, Python's last-resort
# handler would print it a second time. Records still reach the root handlers of `run`.
log.addHandler(logging.NullHandler())

_WARNED: set[tuple[str, int]] = set()
_LOCK = threading.Lock()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def estimated_in_use(config: Config) -> list[tuple[str, int]]:
    """(profile, year) for every estimated year a decision of this process consulted."""
    found = []
    for name, profile in sorted(config.jurisdictions.items()):
        calendar = WorkingCalendar.for_profile(profile)
        found += [(name, year) for year in calendar.estimated_years_used()]
    return found


def warning_text(profile: str, year: int) -> str:
    return (
        f"calendar estimated: profile {profile}, year {year} is not in its official_years; its holidays"
        f" and adjusted working days come from the holidays package's rules, not an official notice."
        f" Check `dispatcher calendar {profile} --year {year}` against the published schedule, add any"
        f" difference to extra_holidays / extra_working_days, then add {year} to"
        f" jurisdictions.{profile}.official_years"
    )


def warn_estimated(config: Config, stream: TextIO | None = None) -> list[tuple[str, int]]:
    """Warn (log, and `stream` if given) once per process for each estimated (profile,
    year) in use that has not been warned about yet; returns the new ones."""
    with _LOCK:
        new = [key for key in estimated_in_use(config) if key not in _WARNED]
        _WARNED.update(new)
    for profile, year in new:
        text = warning_text(profile, year)
        log.warning(text, extra={"profile": profile, "year": year})
        if stream is not None:
            print(f"warning: {text}", file=stream, flush=True)
    return new


def metric_lines(config: Config, now: dt.datetime) -> list[str]:
    """`dispatcher_calendar_estimated{profile,year}`: 1 for an estimated year, 0 for an
    official one; the years decisions used and each working-day profile's current year."""
    rows: dict[tuple[str, int], int] = {}
    for name, profile in sorted(config.jurisdictions.items()):
        calendar = WorkingCalendar.for_profile(profile)
        if calendar.days != "working":
            continue  # every day is a contact day: nothing to estimate
        years = set(calendar.years_used) | {local_date(now, z).year for z in profile.default_timezones}
        for year in years:
            rows[(name, year)] = int(calendar.is_estimated_year(year))
    lines = [
        "# HELP dispatcher_calendar_estimated 1 when a working-day profile's calendar for the year is an"
        " estimate (the year is not in its official_years).",
        "# TYPE dispatcher_calendar_estimated gauge",
    ]
    lines += [f'dispatcher_calendar_estimated{{profile="{_label(name)}",year="{year}"}} {value}'
              for (name, year), value in sorted(rows.items())]
    return lines


def forget_warnings() -> None:
    """Forget which (profile, year) pairs were warned about (tests; a new process does it too)."""
    with _LOCK:
        _WARNED.clear()
