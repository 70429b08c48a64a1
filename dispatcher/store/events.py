"""Append-only events: the case timeline and the audit trail (STYLE principle 9).

The one place that builds and inserts event rows. Every writer goes through it:
`record_event` (one row, on a Core connection or an ORM session), `event_values` +
`insert_events` (many rows, one statement), and `encode_data` for the status hot
path, whose hand-written SQL inserts its `status_received` row itself. The data column
is JSON text with sorted keys; nothing reads it back by pattern (deduplication uses
`store.dedupe`, never the text of an event).

Every event that names a case also invalidates the case's planned instant
(`store.plan_state.invalidate`, same transaction): whatever an event records may change
the case's next decision, so the next planner run evaluates it again. A new source of
events therefore needs nothing more to be seen by the incremental planner. Only the
planner's own scheduled messages pass `invalidates=False` (it accounts for them itself).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlmodel import Session

from dispatcher.store.plan_state import invalidate
from dispatcher.store.tables import EventRow, events_t


class EventKind(StrEnum):
    CASE_IMPORTED = "case_imported"
    CASE_UPDATED = "case_updated"
    MESSAGE_QUEUED = "message_queued"
    MESSAGE_DEFERRED = "message_deferred"
    MESSAGE_SENT = "message_sent"
    MESSAGE_SENT_UNCONFIRMED = "message_sent_unconfirmed"  # the provider may have it; it could not say
    MESSAGE_FAILED = "message_failed"
    MESSAGE_CANCELLED = "message_cancelled"
    MESSAGE_RECONCILED = "message_reconciled"
    STATUS_RECEIVED = "status_received"
    REPLY_RECEIVED = "reply_received"
    KEYWORD_RECEIVED = "keyword_received"
    KEYPRESS = "keypress"
    CALL_ANSWERED = "call_answered"
    OPTED_OUT = "opted_out"
    OPTED_IN = "opted_in"
    HOLD_PLACED = "hold_placed"
    HOLD_RELEASED = "hold_released"
    PAYMENT_RECORDED = "payment_recorded"
    CASE_CLOSED = "case_closed"
    ESCALATED = "escalated"
    LINK_CLICKED = "link_clicked"
    BOUNCE = "bounce"
    ADDRESS_INVALID = "address_invalid"
    COLLECTOR_TASK = "collector_task"
    ORPHAN_CALLBACK = "orphan_callback"
    PROMISE_BROKEN = "promise_broken"
    REPLY_NOT_SENT = "reply_not_sent"
    # the debtor's page and repayment plans
    SELF_SERVICE = "self_service"  # a choice the debtor made on their page (pay, promise, plan, dispute)
    PLAN_CREATED = "plan_created"
    PLAN_BROKEN = "plan_broken"
    PLAN_COMPLETED = "plan_completed"
    # the collectors' workbench
    TASK_CLAIMED = "task_claimed"
    TASK_DONE = "task_done"
    NOTE_ADDED = "note_added"
    CONTACT_REVEALED = "contact_revealed"  # a collector saw a full phone number on the case page
    # people (no case): who manages whom, and who signed in
    USER_ADDED = "user_added"
    USER_DISABLED = "user_disabled"
    PASSWORD_SET = "password_set"
    TOKEN_CREATED = "token_created"
    TOKEN_REVOKED = "token_revoked"
    SIGNED_IN = "signed_in"
    SIGN_IN_REFUSED = "sign_in_refused"
    SIGNED_OUT = "signed_out"
    # template versions (no case): four-eyes approval's audit trail
    TEMPLATE_SAVED = "template_saved"
    TEMPLATE_APPROVED = "template_approved"
    TEMPLATE_REJECTED = "template_rejected"
    TEMPLATE_IMPORTED = "template_imported"


#: The columns of one event row, in the order `event_values` builds them.
_COLUMNS = ("case_id", "message_id", "at", "kind", "actor", "data")


def encode_data(data: Mapping[str, Any]) -> str:
    """An event's data as stored: JSON, keys sorted, non-ASCII kept, anything else
    (datetimes, decimals, enums) as its string."""
    return json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)


def event_values(
    kind: EventKind | str,
    at: dt.datetime,
    *,
    case_id: str | None = None,
    message_id: int | None = None,
    actor: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    """One events row as values (for `insert_events`); `data` becomes the JSON column."""
    return {
        "case_id": case_id,
        "message_id": message_id,
        "at": at,
        "kind": str(kind),
        "actor": actor,
        "data": encode_data(data),
    }


def record_event(
    session: Session | Connection,
    kind: EventKind | str,
    at: dt.datetime,
    *,
    case_id: str | None = None,
    message_id: int | None = None,
    actor: str | None = None,
    **data: Any,
) -> None:
    """Append one event, on an ORM session or a Core connection."""
    values = event_values(kind, at, case_id=case_id, message_id=message_id, actor=actor, **data)
    if isinstance(session, Session):
        session.add(EventRow(**values))
        if case_id is not None:
            invalidate(session.connection(), [case_id])
    else:
        session.execute(insert(events_t), [values])
        if case_id is not None:
            invalidate(session, [case_id])


def insert_events(conn: Connection, rows: list[dict[str, Any]], *, invalidates: bool = True) -> None:
    """Append many events (built by `event_values`) in one statement, and invalidate the
    planned instant of the cases they name (unless `invalidates` is False: the planner's
    own scheduled messages).

    On PostgreSQL several rows go as one array per column through `INSERT ... SELECT
    unnest(...)`: psycopg would otherwise execute and parse each row apart, which costs
    several times more for the import's and the planner's batches."""
    if not rows:
        return
    if invalidates:
        invalidate(conn, (row["case_id"] for row in rows))
    if len(rows) == 1 or conn.dialect.name != "postgresql":
        conn.execute(insert(events_t), rows)
        return
    source = select(*(func.unnest(bindparam(c, type_=ARRAY(events_t.c[c].type))).label(c) for c in _COLUMNS))
    conn.execute(postgresql.insert(events_t).from_select(list(_COLUMNS), source),
                 {c: [row[c] for row in rows] for c in _COLUMNS})
