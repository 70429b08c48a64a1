"""The legal contact window: local hours on working days, in every possible zone.

A moment is legal for a zone when its local date there is a working day of the
profile's calendar and its local wall time lies in ``[hours[0], hours[1])``. With
several possible zones a moment is legal only if it is legal in every one of them.

Internally each (calendar, hours, zone, local date) maps to one half-open interval of
POSIX seconds, computed once and cached. When a window bound falls into a DST
transition the interval is taken conservatively: a start time that occurs twice (fall
back) starts at its *second* occurrence, a start or end time that does not exist
(spring forward) maps to the transition instant. With the shipped hours (08:00/09:00
to 21:00) no bound ever falls into a transition, and the intervals are exactly the
wall-clock definition, e.g. on Sun 2026-03-08 Los Angeles opens at 08:00 PDT (-07:00).

`find_legal_ts` is the search behind every `not_before`: the earliest instant at or
after a start that is legal in every zone and on a day the caps allow. It is a fixpoint
iteration: each zone (and the cap rule) pushes the candidate forward to its own next
legal instant; no legal instant can be skipped because every push jumps only over
instants that are illegal for that zone. The search is bounded (`SEARCH_DAYS`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dispatcher.policy.calendar import WorkingCalendar, format_day
from dispatcher.policy.zones import zone_info

if TYPE_CHECKING:
    from dispatcher.config import Jurisdiction

#: How far ahead a `not_before` is searched before the configuration is declared broken.
SEARCH_DAYS = 400


class NoLegalInstantError(ValueError):
    """No legal contact moment exists within `SEARCH_DAYS`: the profile is misconfigured
    (e.g. zones whose windows never overlap, or every day a holiday)."""


def _wall(ts: int, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, zone).replace(tzinfo=None)


def _instant_of_wall(day: dt.date, at: dt.time, zone: dt.tzinfo, *, latest: bool) -> int:
    """POSIX seconds of local wall time `day at` in `zone`.

    Ambiguous (fall back): the first occurrence, or the second if `latest`.
    Non-existent (spring forward): the transition instant, i.e. the first instant whose
    wall time is later than `at`.
    """
    naive = dt.datetime.combine(day, at)
    ts0 = int(naive.replace(tzinfo=zone, fold=0).timestamp())
    ts1 = int(naive.replace(tzinfo=zone, fold=1).timestamp())
    if ts0 == ts1:
        return ts0
    if ts1 > ts0:  # ambiguous: the wall time occurs at ts0 and again at ts1
        return ts1 if latest else ts0
    # gap: wall(ts1) < naive <= wall(ts0); find the first second with wall >= naive
    lo, hi = ts1, ts0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall(mid, zone) >= naive:
            hi = mid
        else:
            lo = mid
    return hi


class ContactWindow:
    """The legal hours of one zone under one calendar; cached per local date."""

    __slots__ = ("calendar", "zone", "tz", "start", "end", "_bounds", "_midnight")

    def __init__(self, calendar: WorkingCalendar, zone: str, start: dt.time, end: dt.time) -> None:
        self.calendar = calendar
        self.zone = zone
        self.tz = zone_info(zone)
        self.start = start
        self.end = end
        self._bounds: dict[int, tuple[int, int] | None] = {}
        self._midnight: dict[int, int] = {}

    @classmethod
    def get(cls, calendar: WorkingCalendar, zone: str, hours: tuple[dt.time, dt.time]) -> ContactWindow:
        """The shared window for (calendar, zone, hours)."""
        key = (zone, hours[0], hours[1])
        window = calendar.windows.get(key)
        if window is None:
            window = calendar.windows[key] = cls(calendar, zone, hours[0], hours[1])
        return window  # type: ignore[return-value]

    def ordinal(self, ts: float) -> int:
        """The local date (as ordinal) of POSIX instant `ts`."""
        return dt.datetime.fromtimestamp(ts, self.tz).toordinal()

    def bounds(self, ordinal: int) -> tuple[int, int] | None:
        """[open, close) in POSIX seconds on local date `ordinal`, or None if not a working day."""
        try:
            return self._bounds[ordinal]
        except KeyError:
            pass
        if self.calendar.is_working_ordinal(ordinal):
            day = dt.date.fromordinal(ordinal)
            opens = _instant_of_wall(day, self.start, self.tz, latest=True)
            closes = _instant_of_wall(day, self.end, self.tz, latest=False)
            value: tuple[int, int] | None = (opens, closes) if opens < closes else None
        else:
            value = None
        self._bounds[ordinal] = value
        return value

    def day_start(self, ordinal: int) -> int:
        """The first instant of local date `ordinal` (POSIX seconds)."""
        try:
            return self._midnight[ordinal]
        except KeyError:
            value = self._midnight[ordinal] = _instant_of_wall(
                dt.date.fromordinal(ordinal), dt.time(0, 0), self.tz, latest=False
            )
            return value

    def contains(self, ts: float) -> bool:
        b = self.bounds(self.ordinal(ts))
        return b is not None and b[0] <= ts < b[1]

    def next_from(self, ts: float) -> float:
        """The earliest legal instant >= `ts` in this zone."""
        ordinal = self.ordinal(ts)
        for k in range(SEARCH_DAYS + 1):
            b = self.bounds(ordinal + k)
            if b is not None and ts < b[1]:
                return ts if ts >= b[0] else b[0]
        raise NoLegalInstantError(
            f"no working day with hours {self.start:%H:%M}-{self.end:%H:%M} in {self.zone} within"
            f" {SEARCH_DAYS} days after {format_day(dt.date.fromordinal(ordinal))} under calendar"
            f" {self.calendar.code}; check the profile's calendar, days and extra_holidays"
        )

    def why_not(self, ts: float) -> tuple[bool, str]:
        """For an illegal `ts`: (is it a non-working day?, why) where why is the
        calendar's sentence for a non-working day, else the local time and zone."""
        local = dt.datetime.fromtimestamp(ts, self.tz)
        day = local.date()
        if not self.calendar.is_working_ordinal(day.toordinal()):
            return True, self.calendar.describe(day)
        return False, f"{local:%H:%M} {format_day(day)} {self.zone}"

    @property
    def hours_text(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def windows_for(
    zones: Sequence[str], profile: Jurisdiction, calendar: WorkingCalendar
) -> tuple[ContactWindow, ...]:
    """One `ContactWindow` per zone, primary first."""
    if not zones:
        raise ValueError("a case needs at least one time zone")
    return tuple(ContactWindow.get(calendar, z, profile.hours) for z in zones)


def find_legal_ts(
    ts: float,
    windows: Sequence[ContactWindow],
    day_allowed: Callable[[int], bool] | None = None,
) -> float:
    """Earliest instant >= `ts` legal in every window whose primary-zone date
    (`windows[0]`) passes `day_allowed` (the caps)."""
    limit = ts + SEARCH_DAYS * 86400
    primary = windows[0]
    while True:
        if ts > limit:
            raise NoLegalInstantError(
                f"no moment legal in every one of {', '.join(w.zone for w in windows)} (and allowed"
                f" by the caps) within {SEARCH_DAYS} days; the zones' windows may never overlap"
            )
        moved = False
        for window in windows:
            nxt = window.next_from(ts)
            if nxt != ts:
                ts = nxt
                moved = True
        if day_allowed is not None:
            ordinal = primary.ordinal(ts)
            if not day_allowed(ordinal):
                ts = max(ts + 1, primary.day_start(ordinal + 1))
                moved = True
        if not moved:
            return ts


def _require_aware(instant: dt.datetime) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError("instants must be timezone-aware")


def is_legal(
    instant: dt.datetime, zones: Sequence[str], profile: Jurisdiction, calendar: WorkingCalendar
) -> bool:
    """Is `instant` inside the contact window in every one of `zones`?"""
    _require_aware(instant)
    ts = instant.timestamp()
    return all(w.contains(ts) for w in windows_for(zones, profile, calendar))


def next_legal_instant(
    now: dt.datetime,
    zones: Sequence[str],
    profile: Jurisdiction,
    calendar: WorkingCalendar,
    *,
    day_allowed: Callable[[dt.date], bool] | None = None,
) -> dt.datetime:
    """The earliest legal instant >= `now` (so `now` itself when it is legal), in the
    primary zone. `day_allowed` optionally restricts the primary-zone dates (caps).

    Raises `NoLegalInstantError` when none exists within `SEARCH_DAYS`."""
    _require_aware(now)
    windows = windows_for(zones, profile, calendar)
    allowed = None
    if day_allowed is not None:
        allowed = lambda ordinal: day_allowed(dt.date.fromordinal(ordinal))  # noqa: E731
    ts = find_legal_ts(now.timestamp(), windows, allowed)
    return to_primary(ts, windows[0])


def to_primary(ts: float, window: ContactWindow) -> dt.datetime:
    """POSIX seconds as an aware datetime in the window's zone."""
    return dt.datetime.fromtimestamp(ts, window.tz)
