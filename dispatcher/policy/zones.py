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
