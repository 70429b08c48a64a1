"""A case's timeline for people: the case, its holds, every message with its text and
status, and its events, oldest first (`dispatcher case show`, the API, the console).

A plain read through SQLAlchemy's result processing: one case at a time, so clarity
wins over speed (the planner's bulk read is `store.snapshots`).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.engine import Connection

from dispatcher.policy.zones import days_past_due_at, zone_info
from dispatcher.store.plans import case_plans
from dispatcher.store.repository import CaseNotFound
from dispatcher.store.tables import cases_t, events_t, holds_t, messages_t
from dispatcher.store.values import cents, split_list

#: What a status means to a reader of the timeline, where its name is not enough.
STATUS_NOTES = {
    "sent_unconfirmed": "sent, unconfirmed: the provider may have it but could not confirm it (e.g. the SMTP "
                        "connection was lost after the message data went out); counted as sent, never resent",
}


def _iso(value: dt.datetime | dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def case_timeline(conn: Connection, case_id: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """The case's timeline, the JSON shape of `dispatcher case show --format json`:
    `case_id`, `status`, `holds` [{reason, until}], `messages` [{id, channel, template,
    status, provider_id, body, ..., last_error, note}], `events` [{at, kind, ...}], oldest
    first. `note` explains a status such as `sent_unconfirmed` (`STATUS_NOTES`). Holds
    are those not released (and, given `now`, not expired). Money: `amount_due`
    (imported), `paid_total` and `outstanding` (what is owed now); given `now`,
    `days_past_due` on the debtor's local date in `zone`, the case's primary zone.
    `plans`: the case's repayment plans (`store.plans.case_plans`)."""
    row = conn.execute(select(cases_t).where(cases_t.c.case_id == case_id)).first()
    if row is None:
        raise CaseNotFound(case_id)
    zones = split_list(row.zones)
    # The debtor's day (SPEC 11): dates and days past due in the case's primary zone.
    # Zones are resolved at import (the profile's defaults at worst), so one is always there.
    zone = zones[0] if zones else "UTC"
    hold_filter = [holds_t.c.case_id == case_id, holds_t.c.released_at.is_(None)]
    if now is not None:
        hold_filter.append(or_(holds_t.c.until.is_(None), holds_t.c.until > now))
    holds = [
        {"reason": h.reason, "until": _iso(h.until),
         "until_local": None if h.until is None else h.until.astimezone(zone_info(zone)).isoformat(),
         "placed_at": _iso(h.placed_at), "placed_by": h.placed_by, "note": h.note}
        for h in conn.execute(select(holds_t).where(*hold_filter).order_by(holds_t.c.placed_at, holds_t.c.id))
    ]
    m = messages_t.c
    messages = [
        {
            "id": r.id,
            "channel": r.channel,
            "template": r.template_id,
            "template_version": r.template_version,
            "status": r.status,
            "provider_id": r.provider_id,
            "body": r.body,
            "subject": r.subject,
            "stage": r.stage,
            "kind": r.kind,
            "scheduled_at": _iso(r.scheduled_at),
            "sent_at": _iso(r.sent_at),
            "status_at": _iso(r.status_at),
            "last_error": r.last_error,
            "note": STATUS_NOTES.get(r.status),
        }
        for r in conn.execute(select(messages_t).where(m.case_id == case_id).order_by(m.scheduled_at, m.id))
    ]
    events = []
    for e in conn.execute(
        select(events_t).where(events_t.c.case_id == case_id).order_by(events_t.c.at, events_t.c.id)
    ):
        item: dict[str, Any] = {"at": _iso(e.at), "kind": e.kind}
        if e.actor is not None:
            item["actor"] = e.actor
        if e.message_id is not None:
            item["message_id"] = e.message_id
        for key, value in json.loads(e.data or "{}").items():
            item.setdefault(key, value)
        events.append(item)
    return {
        "case_id": row.case_id,
        "status": row.status,
        "jurisdiction": row.jurisdiction,
        "currency": row.currency,
        "amount_due": str(cents(row.amount_due)),
        "paid_total": str(cents(row.paid_total)),
        # what the debtor owes now (SPEC 11): amount_due - paid_total, never below 0
        "outstanding": str(max(cents(row.amount_due) - cents(row.paid_total), Decimal("0.00"))),
        "due_date": _iso(row.due_date),
        "days_past_due": None if now is None else days_past_due_at(row.due_date, now, zone),
        "zone": zone,
        "zones": list(zones),
        "escalated_stages": list(split_list(row.escalated_stages)),
        "holds": holds,
        "messages": messages,
        "events": events,
        "plans": case_plans(conn, case_id),
    }
