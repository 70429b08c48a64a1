"""`dispatcher calendar PROFILE --year YYYY`: a profile's calendar exceptions for a year,
with where each answer comes from (SPEC 12), so an operator can check it against the
official notice before marking the year official."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from dispatcher.commands.common import fail, out, rt


def calendar_cmd(
    ctx: typer.Context,
    profile: Annotated[str, typer.Argument(help="a jurisdiction profile key, e.g. cn")],
    year: Annotated[int, typer.Option("--year", help="the year, e.g. 2027")],
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Every non-working weekday and every working weekend day of YEAR for PROFILE, with
    its source: official (a year in official_years), estimated (the holidays package's
    rules) or config (extra_holidays / extra_working_days)."""
    from dispatcher.policy.calendar import WorkingCalendar

    if fmt not in ("table", "json"):
        raise fail(f"--format {fmt!r}: use table or json")
    if not 1900 <= year <= 2200:
        raise fail(f"--year {year}: give a year between 1900 and 2200, e.g. 2027")
    config = rt(ctx).config
    settings = config.jurisdictions.get(profile)
    if settings is None:
        raise fail(f"no profile {profile!r} in the configuration; profiles: {', '.join(sorted(config.jurisdictions))}")
    try:
        days = WorkingCalendar.for_profile(settings).year_days(year)
    except ValueError as exc:  # a calendar code the holidays package does not know
        raise fail(f"jurisdictions.{profile}.calendar: {exc}") from None
    if fmt == "json":
        print(json.dumps([d.as_json() for d in days], ensure_ascii=False, indent=1))
        return
    calendar = WorkingCalendar.for_profile(settings)
    if settings.days != "working":
        state = 'every day is a contact day (days = "all"): nothing is estimated'
    elif calendar.is_estimated_year(year):
        state = (f"ESTIMATED: {year} is not in jurisdictions.{profile}.official_years; check it against the"
                 " official notice, apply differences with extra_holidays / extra_working_days, then mark it official")
    else:
        state = f"official: {year} is in jurisdictions.{profile}.official_years"
    table = Table("date", "day", "working", "name", "source",
                  title=f"calendar {profile} ({settings.calendar}) {year}: {state}")
    for d in days:
        table.add_row(d.date.isoformat(), d.date.strftime("%a"), "yes" if d.working else "no", d.name, d.source)
    out.print(table)
