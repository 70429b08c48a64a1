"""Append-only events: the case timeline and the audit trail (STYLE principle 9)."""

from __future__ import annotations

import datetime as dt
import json
from enum import StrEnum
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection
from sqlmodel import Session

from dispatcher.store.tables import EventRow


class EventKind(StrEnum):
    CASE_IMPORTED = "case_imported"
    CASE_UPDATED = "case_updated"
    MESSAGE_QUEUED = "message_queued"
    MESSAGE_DEFERRED = "message_deferred"
    MESSAGE_SENT = "message_sent"
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


def _encode(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)


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
    """Append one event. Works on an ORM session or a Core connection."""
    values: dict[str, Any] = {
        "case_id": case_id,
        "message_id": message_id,
        "at": at,
        "kind": str(kind),
        "actor": actor,
        "data": _encode(data),
    }
    if isinstance(session, Session):
        session.add(EventRow(**values))
    else:
        session.execute(insert(EventRow), [values])


def event_values(
    kind: EventKind | str,
    at: dt.datetime,
    *,
    case_id: str | None = None,
    message_id: int | None = None,
    actor: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    """One events row as values, for batched `insert_events`."""
    return {
        "case_id": case_id,
        "message_id": message_id,
        "at": at,
        "kind": str(kind),
        "actor": actor,
        "data": _encode(data),
    }


def insert_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Append many events in one statement."""
    if rows:
        conn.execute(insert(EventRow), rows)
