"""Which time zones a debtor may be in.

`resolve_zones` runs once, at import time, and its result is stored with the case
(`CaseSnapshot.zones`), so the decision path never parses a phone number.

Order of evidence: an explicit IANA zone from the import; else the zones
`phonenumbers` derives from the number; else the profile's `default_timezones`.
A number `phonenumbers` can only place at country level (its answer is the whole
country-code list, e.g. all 42 NANP zones from Guam to Newfoundland for a US toll-free
number) counts as "unknown": the intersection of such a spread of zones has no legal
hour at all, and the profile's defaults are the lawful "every possible zone" answer
(Regulation F) for the jurisdiction we actually operate in.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from typing import TYPE_CHECKING

import phonenumbers
from phonenumbers import timezone as phone_timezone
from phonenumbers.tzdata import TIMEZONE_DATA

if TYPE_CHECKING:
    from dispatcher.config import Jurisdiction
    from dispatcher.domain import Case

_UNKNOWN_ZONE = "Etc/Unknown"


@functools.cache
def zone_info(name: str) -> zoneinfo.ZoneInfo:
    """A cached `ZoneInfo` (raises `ZoneInfoNotFoundError` for an unknown name)."""
    return zoneinfo.ZoneInfo(name)


def local_date(instant: dt.datetime, zone: str) -> dt.date:
    """The calendar date of an aware `instant` in `zone`."""
    return instant.astimezone(zone_info(zone)).date()


def _is_zone(name: str) -> bool:
    try:
        zone_info(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def zones_from_phone(phone: str | None, default_region: str | None = None) -> tuple[str, ...]:
    """Zones `phonenumbers` gives for a number, or () when it cannot place it."""
    if not phone:
        return ()
    try:
        number = phonenumbers.parse(phone, default_region)
    except phonenumbers.NumberParseException:
        return ()
    zones = tuple(phone_timezone.time_zones_for_number(number))
    if not zones or _UNKNOWN_ZONE in zones:
        return ()
    country_level = TIMEZONE_DATA.get(str(number.country_code))
    if len(zones) > 1 and country_level is not None and tuple(country_level) == zones:
        return ()
    return tuple(z for z in zones if _is_zone(z))


def resolve_zones(case: Case, profile: Jurisdiction) -> tuple[str, ...]:
    """The zones a case may be in, primary first (see the module docstring)."""
    if case.timezone:
        if not _is_zone(case.timezone):
            raise ValueError(f"{case.timezone!r} is not an IANA time zone (e.g. Asia/Shanghai)")
        return (case.timezone,)
    from_phone = zones_from_phone(case.phone, profile.default_region)
    if from_phone:
        return from_phone
    return tuple(profile.default_timezones)


def primary_zone(zones: tuple[str, ...] | list[str], profile: Jurisdiction | None = None) -> str:
    """The case's primary zone: the first of its zones, else its profile's first default
    (else UTC, for a case whose profile is not configured)."""
    if zones:
        return zones[0]
    if profile is not None and profile.default_timezones:
        return profile.default_timezones[0]
    return "UTC"


def days_past_due_at(due_date: dt.date, now: dt.datetime, zone: str) -> int:
    """Days past due (SPEC 3, 11): the debtor's local date of `now` in `zone` less the due date."""
    return (local_date(now, zone) - due_date).days


def start_of_local_day(day: dt.date, zone: str) -> dt.datetime:
    """00:00 of `day` in `zone` as an aware instant (in `zone`). On a day whose midnight a
    DST change skips, the first instant of the day (`fold` and zoneinfo's normalisation
    give the wall time after the gap)."""
    tz = zone_info(zone)
    wall = dt.datetime.combine(day, dt.time(0, 0), tzinfo=tz)
    # A skipped midnight (e.g. America/Santiago, Asia/Beirut) does not exist: the day
    # starts at the first wall time that does, which a UTC round trip yields.
    return wall.astimezone(dt.UTC).astimezone(tz)


class PersonDateError(ValueError):
    """A date a person typed is neither a calendar date nor an instant with an offset."""


def parse_person_date(text: str, zone: str) -> dt.datetime:
    """A date a person gives (a hold's end, a promise date), as an aware instant (SPEC 11).

    `YYYY-MM-DD` is a calendar date in the debtor's primary `zone`: 00:00 local time of
    that date. An ISO 8601 instant with an offset (`2026-12-10T09:00:00-08:00`, `...Z`)
    is taken as that instant. A date and time without an offset is refused: whose clock
    it means would be a guess."""
    value = text.strip()
    try:
        return start_of_local_day(dt.date.fromisoformat(value), zone)
    except ValueError:
        pass
    try:
        instant = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise PersonDateError(
            f"{text!r} is not a date; write a date like 2026-12-20 (00:00 in the debtor's time zone)"
            " or an instant with its offset like 2026-12-20T09:00:00-08:00"
        ) from None
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise PersonDateError(
            f"{text!r} has a time but no UTC offset; write a date like {instant.date().isoformat()}"
            f" (00:00 in the debtor's time zone) or add the offset, e.g. {value}+08:00"
        )
    return instant


def promise_window(today: dt.date, days: int, *, first_day: int = 1) -> tuple[dt.date, dt.date]:
    """The dates a debtor may promise to pay by, in their own calendar: from `today +
    first_day` (1 on the page and the API; 0 on a call, where "today" is an answer) to
    `today + days`."""
    return today + dt.timedelta(days=first_day), today + dt.timedelta(days=days)


def promise_hold_until(day: dt.date, zone: str) -> dt.datetime:
    """A promise to pay by `day` lasts to the end of that local day — 00:00 of the next in
    `zone` — so paying on the promised day keeps it, whoever recorded it (call, page, API)."""
    return start_of_local_day(day + dt.timedelta(days=1), zone)
