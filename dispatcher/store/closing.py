"""What closing a case does, in one place: every path that closes a case (a payment in
full, a kept plan's waiver, an import that gives it a closed status) calls
`case_closed` (an import: `cases_closed`, for its whole batch) in its own transaction.
The case gets its `case_closed` event, its messages still waiting in the outbox are
cancelled, and its open and claimed tasks are closed by the system with a note saying
why (`policy.lifecycle.task_closing_note`), each a `task_done` event on the case's
timeline.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.engine import Connection

from dispatcher.domain import CaseStatus, MessageStatus
from dispatcher.policy.lifecycle import SYSTEM, task_closing_note
from dispatcher.store.events import EventKind, event_values, insert_events
from dispatcher.store.tables import messages_t, tasks_t

#: the tasks a collector still has to do
_ACTIVE_TASK_STATES = ("open", "claimed")
#: cases per statement (bound parameters stay well under both databases' limits)
_CHUNK = 1000


def cancel_queued(conn: Connection, case_id: str, now: dt.datetime, reason: str) -> tuple[int, ...]:
    """Cancel the case's messages still waiting in the outbox (not those in flight)."""
    return _cancel_queued(conn, [case_id], now, reason)


def _cancel_queued(conn: Connection, case_ids: Sequence[str], now: dt.datetime, reason: str) -> tuple[int, ...]:
    m = messages_t.c
    cancelled: list[Any] = []
    for start in range(0, len(case_ids), _CHUNK):
        cancelled += conn.execute(
            update(messages_t)
            .where(m.case_id.in_(case_ids[start:start + _CHUNK]), m.status == MessageStatus.QUEUED.value)
            .values(status=MessageStatus.CANCELLED.value, status_at=now, last_error=reason)
            .returning(m.id, m.case_id, m.channel)
        ).all()
    cancelled.sort()
    insert_events(conn, [event_values(EventKind.MESSAGE_CANCELLED, now, case_id=case_id, message_id=mid,
                                      channel=channel, reason=reason) for mid, case_id, channel in cancelled])
    return tuple(mid for mid, _, _ in cancelled)


def close_tasks(conn: Connection, case_ids: Sequence[str], now: dt.datetime, note: str, *,
                task_id: int | None = None) -> tuple[int, ...]:
    """Close the open and claimed tasks of these cases (only `task_id`, when given) as
    done by the system with `note`: one `task_done` event each. Returns their ids."""
    t = tasks_t.c
    closed: list[Any] = []
    for start in range(0, len(case_ids), _CHUNK):
        query = update(tasks_t).where(t.case_id.in_(case_ids[start:start + _CHUNK]),
                                      t.state.in_(_ACTIVE_TASK_STATES))
        if task_id is not None:
            query = query.where(t.id == task_id)
        closed += conn.execute(
            query.values(state="done", done_at=now, done_by=SYSTEM, note=note,
                         assignee=func.coalesce(t.assignee, SYSTEM))
            .returning(t.id, t.case_id, t.kind)
        ).all()
    closed.sort()
    insert_events(conn, [event_values(EventKind.TASK_DONE, now, case_id=case_id, actor=SYSTEM, task_id=tid,
                                      task=kind, note=note) for tid, case_id, kind in closed])
    return tuple(tid for tid, _, _ in closed)


def cases_closed(conn: Connection, closures: Sequence[tuple[str, CaseStatus, str]], by: str | None,
                 now: dt.datetime) -> tuple[int, ...]:
    """Record that these cases closed just now, each (case id, status, reason from
    `policy.lifecycle`; their rows already say so): a `case_closed` event each, their
    queued messages cancelled (the ids are returned), their tasks closed with a note
    saying why. A few statements for a whole batch."""
    if not closures:
        return ()
    insert_events(conn, [event_values(EventKind.CASE_CLOSED, now, case_id=case_id, actor=by, status=status.value,
                                      reason=reason) for case_id, status, reason in closures])
    cancelled = _cancel_queued(conn, [case_id for case_id, _, _ in closures], now, reason="case_closed")
    by_note: dict[str, list[str]] = defaultdict(list)
    for case_id, status, reason in closures:
        by_note[task_closing_note(status, reason)].append(case_id)
    for note, case_ids in by_note.items():
        close_tasks(conn, case_ids, now, note)
    return cancelled


def case_closed(conn: Connection, case_id: str, status: CaseStatus, reason: str, by: str | None,
                now: dt.datetime) -> tuple[int, ...]:
    """`cases_closed` for one case."""
    return cases_closed(conn, [(case_id, status, reason)], by, now)


__all__ = ["cancel_queued", "case_closed", "cases_closed", "close_tasks"]
