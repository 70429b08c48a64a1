"""`dispatcher case …`: a case's timeline, holds and their release, agreements."""

from __future__ import annotations

import datetime as dt
import json
import sys
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.table import Table

from dispatcher.commands.common import fail, out, rt
from dispatcher.wiring import Runtime

case_app = typer.Typer(help="A case's timeline, holds, agreements.", no_args_is_help=True)


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
    _print_timeline(runtime, timeline)


def _print_timeline(runtime: Runtime, timeline: dict[str, Any]) -> None:
    """The header (masked name, outstanding amount, stage), holds, every message with its
    whole text (a block each, never cut at the terminal's width) and the events."""
    from sqlalchemy import select

    from dispatcher.logs import mask_name
    from dispatcher.store.tables import cases_t

    with runtime.engine.connect() as conn:
        name = conn.execute(select(cases_t.c.name).where(cases_t.c.case_id == timeline["case_id"])).scalar()
    outstanding = Decimal(timeline["amount_due"]) - Decimal(timeline["paid_total"])
    stage = _stage_now(runtime, timeline)
    print(f"{timeline['case_id']}  {mask_name(name)}  status {timeline['status']}  stage {stage}"
          f"  outstanding {outstanding} {timeline['currency']} (due {timeline['amount_due']},"
          f" paid {timeline['paid_total']})  due date {timeline['due_date']}")
    holds = Table("hold", "until", title="holds")
    for hold in timeline["holds"]:
        holds.add_row(str(hold["reason"]), str(hold.get("until") or "until released"))
    out.print(holds)
    print(f"messages ({len(timeline['messages'])})")
    for m in timeline["messages"]:
        note = f" ({m['note']})" if m.get("note") else ""
        version = f" v{m['template_version']}" if m.get("template_version") else ""
        print(f"- #{m['id']} {m['channel']} {m.get('template') or '-'}{version} {m['status']}{note}"
              f" provider id {m.get('provider_id') or '-'} sent {m.get('sent_at') or '-'}")
        if m.get("subject"):
            print(f"  subject: {m['subject']}")
        for line in (m.get("body") or "(not rendered yet)").splitlines() or [""]:
            print(f"  {line}")
    events = Table("at", "kind", "details", title="events")
    for e in timeline["events"]:
        details = {k: v for k, v in e.items() if k not in ("at", "kind")}
        events.add_row(str(e["at"]), str(e["kind"]), json.dumps(details, ensure_ascii=False, default=str))
    out.print(events)


def _stage_now(runtime: Runtime, timeline: dict[str, Any]) -> str:
    """The case's stage at the clock's now, DPD counted in its primary zone (SPEC 11)."""
    from zoneinfo import ZoneInfo

    from dispatcher.policy.stages import days_past_due

    if not timeline.get("due_date") or not timeline.get("zones"):
        return "-"
    today = runtime.clock.now().astimezone(ZoneInfo(timeline["zones"][0])).date()
    dpd = days_past_due(dt.date.fromisoformat(str(timeline["due_date"])[:10]), today)
    stage = runtime.config.stage_for(dpd)
    return f"{stage.name if stage else 'none'} (DPD {dpd})"


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


@case_app.command("agreement")
def case_agreement(
    ctx: typer.Context,
    case_id: Annotated[str, typer.Argument()],
    agreement_id: Annotated[int | None, typer.Option("--id", help="one agreement (default: the latest)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="text, json or html (printable)")] = "text",
) -> None:
    """A repayment plan agreement the debtor accepted: the exact text shown, its terms,
    when and through what it was accepted, and the plan's status."""
    from dispatcher.store.plans import case_agreement_ids, get_agreement
    from dispatcher.store.repository import case_zones

    if fmt not in ("text", "json", "html"):
        raise fail(f"--format {fmt!r}: use text, json or html")
    runtime = rt(ctx)
    with runtime.engine.connect() as conn:
        try:
            case_zones(conn, case_id)
        except LookupError as exc:
            raise fail(str(exc)) from None
        ids = case_agreement_ids(conn, case_id)
        if agreement_id is None and not ids:
            raise fail(f"case {case_id} has no agreement (a debtor accepts one on their page)", 1)
        wanted = ids[-1] if agreement_id is None else agreement_id
        found = get_agreement(conn, wanted) if wanted in ids else None
    if found is None:
        raise fail(f"case {case_id} has no agreement {wanted}; its agreements: {', '.join(map(str, ids)) or 'none'}")
    if fmt == "html":
        from dispatcher.web.debtor_page import agreement_page

        sys.stdout.write(bytes(agreement_page(found).body).decode("utf-8"))
        return
    if fmt == "json":
        print(json.dumps({"agreement_id": found.agreement_id, "case_id": found.case_id, "kind": found.kind,
                          "locale": found.locale, "accepted_at": found.accepted_at.isoformat(),
                          "accepted_by": found.accepted_by, "sha256": found.content_hash, "plan_id": found.plan_id,
                          "plan_status": found.plan_status, "terms": found.terms, "text": found.text},
                         ensure_ascii=False, indent=2))
        return
    print(found.text)
    print(f"\n-- agreement {found.agreement_id}, accepted {found.accepted_at.isoformat()} by {found.accepted_by};"
          f" plan {found.plan_id} {found.plan_status}; sha256 {found.content_hash}")
