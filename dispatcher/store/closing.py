"""What closing a case does, in one place: every path that closes a case (a payment in
full, a kept plan's waiver, an import that gives it a closed status) calls
`case_closed` in its own transaction. The case gets its `case_closed` event, its
messages still waiting in the outbox are cancelled, and its open and claimed tasks are
closed by the system with a note saying why (`policy.lifecycle.task_closing_note`), each
a `task_done` event on the case's timeline.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, update
from sqlalchemy.engine import Connection

from dispatcher.domain import CaseStatus, MessageStatus
from dispatcher.policy.lifecycle import SYSTEM, task_closing_note
from dispatcher.store.events import EventKind, event_values, insert_events
from dispatcher.store.tables import messages_t, tasks_t

#: the tasks a collector still has to do
_ACTIVE_TASK_STATES = ("open", "claimed")


def cancel_queued(conn: Connection, case_id: str, now: dt.datetime, reason: str) -> tuple[int, ...]:
    """Cancel the case's messages still waiting in the outbox (not those in flight)."""
    cancelled = conn.execute(
        update(messages_t)
        .where(messages_t.c.case_id == case_id, messages_t.c.status == MessageStatus.QUEUED.value)
        .values(status=MessageStatus.CANCELLED.value, status_at=now, last_error=reason)
        .returning(messages_t.c.id, messages_t.c.channel)
    ).all()
    insert_events(
        conn,
        [event_values(EventKind.MESSAGE_CANCELLED, now, case_id=case_id, message_id=mid, channel=channel,
                      reason=reason)
         for mid, channel in cancelled],
    )
    return tuple(sorted(mid for mid, _ in cancelled))


def close_tasks(conn: Connection, case_id: str, now: dt.datetime, note: str, *,
                task_id: int | None = None) -> tuple[int, ...]:
    """Close the case's open and claimed tasks (only `task_id`, when given) as done by
    the system with `note`: one `task_done` event each. Returns their ids."""
    t = tasks_t.c
    query = update(tasks_t).where(t.case_id == case_id, t.state.in_(_ACTIVE_TASK_STATES))
    if task_id is not None:
        query = query.where(t.id == task_id)
    closed = conn.execute(
        query.values(state="done", done_at=now, done_by=SYSTEM, note=note, assignee=func.coalesce(t.assignee, SYSTEM))
        .returning(t.id, t.kind)
    ).all()
    insert_events(conn, [event_values(EventKind.TASK_DONE, now, case_id=case_id, actor=SYSTEM, task_id=tid,
                                      task=kind, note=note) for tid, kind in sorted(closed)])
    return tuple(sorted(tid for tid, _ in closed))


def case_closed(conn: Connection, case_id: str, status: CaseStatus, reason: str, by: str | None,
                now: dt.datetime) -> tuple[int, ...]:
    """Record that the case closed just now as `status` (its row already says so) for
    `reason` (`policy.lifecycle`): the `case_closed` event, the queued messages cancelled
    (their ids are returned), the tasks closed with a note saying why."""
    insert_events(conn, [event_values(EventKind.CASE_CLOSED, now, case_id=case_id, actor=by, status=status.value,
                                      reason=reason)])
    cancelled = cancel_queued(conn, case_id, now, reason="case_closed")
    close_tasks(conn, case_id, now, task_closing_note(status, reason))
    return cancelled


__all__ = ["cancel_queued", "case_closed", "close_tasks"]
