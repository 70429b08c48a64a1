"""`dispatcher case …`: a case's timeline, holds and their release."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.table import Table

from dispatcher.commands.common import fail, out, rt

case_app = typer.Typer(help="A case's timeline, holds.", no_args_is_help=True)


def _parse_until(text: str, zone: str) -> dt.datetime:
    """`--until`: a date is 00:00 of that date in the debtor's primary zone (SPEC 11);
    an ISO instant with an offset is that instant."""
    from dispatcher.policy.zones import PersonDateError, parse_person_date

    try:
        return parse_person_date(text, zone)
    except PersonDateError as exc:
        raise fail(f"--until: {exc}") from None


@case_app.command("show")
def case_show(
    ctx: typer.Context,
    case_id: Annotated[str, typer.Argument()],
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """The case's timeline: messages, statuses, replies, clicks, holds (oldest first)."""
    from dispatcher.store.repository import CaseNotFound
    from dispatcher.store.timeline import case_timeline

    if fmt not in ("table", "json"):
        raise fail(f"--format {fmt!r}: use table or json")
    runtime = rt(ctx)
    with runtime.engine.connect() as conn:
        try:
            timeline = case_timeline(conn, case_id, now=runtime.clock.now())
        except CaseNotFound as exc:
            raise fail(str(exc)) from None
    if fmt == "json":
        print(json.dumps(timeline, ensure_ascii=False, indent=2, default=str))
        return
    out.print(f"[bold]{timeline['case_id']}[/] status {timeline['status']}", highlight=False)
    holds = Table("hold", "until", title="holds")
    for hold in timeline["holds"]:
        holds.add_row(str(hold["reason"]), str(hold.get("until") or "until released"))
    out.print(holds)
    messages = Table("id", "channel", "template", "status", "provider id", "body", title="messages")
    for m in timeline["messages"]:
        body = (m.get("body") or "").replace("\n", " ")
        status = str(m["status"]) + (f"\n({m['note']})" if m.get("note") else "")
        messages.add_row(str(m["id"]), str(m["channel"]), str(m.get("template") or "-"), status,
                         str(m.get("provider_id") or "-"), body[:80])
    out.print(messages)
    events = Table("at", "kind", "details", title="events")
    for e in timeline["events"]:
        details = {k: v for k, v in e.items() if k not in ("at", "kind")}
        events.add_row(str(e["at"]), str(e["kind"]), json.dumps(details, ensure_ascii=False, default=str)[:100])
    out.print(events)


@case_app.command("hold")
def case_hold(
    ctx: typer.Context,
    case_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option("--reason", help="collector_hold, legal_hold, dispute_hold, ...")],
    until: Annotated[
        str | None, typer.Option("--until", help="YYYY-MM-DD: contact may resume at 00:00 that day in the"
                                 " debtor's time zone; or an ISO instant with offset")
    ] = None,
    by: Annotated[str, typer.Option("--by", help="who places it (audited)")] = "cli",
    note: Annotated[str | None, typer.Option("--note")] = None,
) -> None:
    """Place a hold on a case (no contact while it is active)."""
    from dispatcher.domain import HOLD_REASONS, Reason
    from dispatcher.store import repository

    allowed = [r.value for r in HOLD_REASONS]
    if reason not in allowed:
        raise fail(f"--reason {reason!r}: use one of {', '.join(allowed)}")
    from dispatcher.policy.zones import primary_zone

    runtime = rt(ctx)
    now = runtime.clock.now()
    with runtime.engine.begin() as conn:
        try:
            jurisdiction, zones = repository.case_zones(conn, case_id)
            zone = primary_zone(zones, runtime.config.jurisdictions.get(jurisdiction))
            until_at = None if until is None else _parse_until(until, zone)
            if until_at is not None and until_at <= now:
                raise fail(f"--until {until}: {until_at.isoformat()} ({zone}) is not in the future;"
                           " give a later date, or omit --until to hold until released")
            repository.place_hold(conn, case_id, Reason(reason), until_at, by, now, note=note)
        except repository.CaseNotFound as exc:
            raise fail(str(exc)) from None
    print(f"hold {reason} placed on {case_id}"
          + (f" until {until_at.isoformat()} ({zone})" if until_at else " until released"))


@case_app.command("release")
def case_release(
    ctx: typer.Context,
    case_id: Annotated[str, typer.Argument()],
    reason: Annotated[str | None, typer.Option("--reason", help="release only this kind of hold")] = None,
    by: Annotated[str, typer.Option("--by")] = "cli",
) -> None:
    """Release a case's holds (all, or those of one reason)."""
    from dispatcher.domain import Reason
    from dispatcher.store import repository

    runtime = rt(ctx)
    with runtime.engine.begin() as conn:
        try:
            count = repository.release_holds(conn, case_id, Reason(reason) if reason else None, by,
                                             runtime.clock.now())
        except repository.CaseNotFound as exc:
            raise fail(str(exc)) from None
        except ValueError:
            raise fail(f"--reason {reason!r} is not a hold reason") from None
    print(f"released {count} hold(s) on {case_id}")
