"""The collectors' task queue (SPEC section 14): what a person must look at, and by when.

`open_task` is the one function that opens a task. The receipts (a PAID, DISPUTE,
free-text or revocation SMS), the IVR (option 3 outside the agents' hours), the broken
promise pass, the planner (a legal hand-off; a case that has not answered a delivered
stage reminder — `policy.reach`: an SMS with a receipt or a completed call, never an
e-mail that was only sent — for `[workbench] escalate_after_days`: `open_escalations`) call it inside
the transaction of what caused the task. A task is unique per (case, kind, source), the
source being what caused it (an SMS's MessageSid, a call's message id, a hold, a stage),
so a re-delivered webhook or a second planning pass opens nothing new. Each opened task
is also a `collector_task` event on the case (the timeline), and each claim and close a
`task_claimed` / `task_done` event with `by` = the person. When a case closes (paid in
full, settled, closed by an import) the system closes its open and claimed tasks with a
note saying why (`store.closing`); a task opened on a closed case is closed at once.

A task is due `[workbench.sla]` after it was opened ("1 working day" counts the case's
jurisdiction calendar in the debtor's zone); the queue lists the overdue first, then by
due time and age.
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, exists, func, literal, or_, select, update
from sqlalchemy.engine import Connection, Engine

from dispatcher.clock import Clock
from dispatcher.config import Config, Workbench
from dispatcher.domain import CLOSED_STATUSES, CaseStatus, MessageKind
from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.policy.lifecycle import task_closing_note
from dispatcher.policy.reach import DELIVERED_STATUSES
from dispatcher.policy.zones import zone_info
from dispatcher.store import repository
from dispatcher.store.closing import close_tasks
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.repository import CaseNotFound
from dispatcher.store.tables import cases_t, events_t, holds_t, messages_t, tasks_t
from dispatcher.store.values import CASE_STATUS_OF

log = logging.getLogger("dispatcher.tasks")

_DETAIL_MAX = 2000
_NOTE_MAX = 4000


class TaskKind(StrEnum):
    VERIFY_PAYMENT_CLAIM = "verify_payment_claim"  # a PAID reply
    REVIEW_DISPUTE = "review_dispute"  # a DISPUTE reply
    READ_REPLY = "read_reply"  # a free-text reply
    CALL_BACK = "call_back"  # IVR option 3 outside the agents' hours
    BROKEN_PROMISE = "broken_promise"  # a promise to pay whose date passed without a payment
    REVIEW_REVOCATION = "review_revocation"  # a phrase opt-out ("please stop texting")
    LEGAL_HANDOFF = "legal_handoff"  # the case was escalated to legal
    ESCALATE = "escalate"  # no answer N days after a delivered stage reminder


class TaskState(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    DONE = "done"


class TaskNotFound(LookupError):
    def __init__(self, task_id: int) -> None:
        super().__init__(f"no such task: {task_id}; list them with GET /api/tasks")
        self.task_id = task_id


class TaskConflict(ValueError):
    """The task is not in a state that allows this (done already, claimed by another)."""


@dataclass(frozen=True, slots=True)
class Task:
    id: int
    case_id: str
    kind: str
    state: str
    created_at: dt.datetime
    due_at: dt.datetime
    assignee: str | None
    detail: str
    claimed_at: dt.datetime | None = None
    done_at: dt.datetime | None = None
    done_by: str | None = None
    note: str | None = None
    source: str = ""

    def overdue(self, now: dt.datetime) -> bool:
        return self.state != TaskState.DONE and self.due_at <= now

    def as_json(self, now: dt.datetime) -> dict[str, Any]:
        """The API's shape of a task (instants as ISO 8601 in UTC)."""
        def iso(value: dt.datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {"id": self.id, "case_id": self.case_id, "kind": self.kind, "state": self.state,
                "created_at": iso(self.created_at), "due_at": iso(self.due_at),
                "overdue": self.overdue(now), "assignee": self.assignee, "detail": self.detail,
                "claimed_at": iso(self.claimed_at), "done_at": iso(self.done_at), "done_by": self.done_by,
                "note": self.note}


def _task(row: Any) -> Task:
    return Task(id=row.id, case_id=row.case_id, kind=row.kind, state=row.state, created_at=row.created_at,
                due_at=row.due_at, assignee=row.assignee, detail=row.detail, claimed_at=row.claimed_at,
                done_at=row.done_at, done_by=row.done_by, note=row.note, source=row.source)


# ----------------------------------------------------------------------------- SLA


def due_at(workbench: Workbench, kind: str, now: dt.datetime, calendar: WorkingCalendar | None,
           zone: str) -> dt.datetime:
    """When a task of `kind` opened at `now` is due. Working days are counted on the
    case's calendar in its primary zone, same local time (Mon–Fri without a calendar)."""
    amount, unit = workbench.sla_for(kind)
    if unit == "hours":
        return now + dt.timedelta(hours=amount)
    if unit == "days":
        return now + dt.timedelta(days=amount)
    local = now.astimezone(zone_info(zone))
    day = local.date()
    for _ in range(amount):
        day += dt.timedelta(days=1)
        # an SLA decides no contact: not a use of the year that the calendar warning counts
        while not (calendar.is_working_day_unrecorded(day) if calendar else day.weekday() < 5):
            day += dt.timedelta(days=1)
    return dt.datetime.combine(day, local.timetz().replace(tzinfo=None), tzinfo=local.tzinfo).astimezone(dt.UTC)


def _case_calendar(conn: Connection, config: Config | None, case_id: str) -> tuple[WorkingCalendar | None, str]:
    jurisdiction, zones = repository.case_zones(conn, case_id)
    profile = config.jurisdictions.get(jurisdiction) if config else None
    zone = zones[0] if zones else (profile.default_timezones[0] if profile and profile.default_timezones else "UTC")
    return (WorkingCalendar.for_profile(profile) if profile else None), zone


# ------------------------------------------------------------------------- opening


def open_task(conn: Connection, config: Config | None, case_id: str, kind: TaskKind | str, now: dt.datetime, *,
              source: str, detail: str = "", actor: str | None = None, **data: Any) -> int | None:
    """Open a task (the one function that does), in the caller's transaction: once per
    (case, kind, source). Returns the new task's id, or None when that task exists
    already. Records a `collector_task` event on the case (`task`, `task_id`, `due_at`,
    and `data`, e.g. the SMS's sid and text); on a closed case the task is closed at once
    by the system (`task_done`, `policy.lifecycle`). `CaseNotFound` for an unknown case."""
    kind = TaskKind(kind)
    calendar, zone = _case_calendar(conn, config, case_id)
    workbench = config.workbench if config else Workbench()
    due = due_at(workbench, kind, now, calendar, zone)
    stmt = repository.dialect_insert(conn, tasks_t).values(
        case_id=case_id, kind=kind.value, source=source[:200], state=TaskState.OPEN.value, created_at=now,
        due_at=due, detail=detail[:_DETAIL_MAX],
    ).on_conflict_do_nothing(index_elements=[tasks_t.c.case_id, tasks_t.c.kind, tasks_t.c.source])
    task_id = conn.execute(stmt.returning(tasks_t.c.id)).scalar()
    if task_id is None:
        return None
    record_event(conn, EventKind.COLLECTOR_TASK, now, case_id=case_id, actor=actor, task=kind.value,
                 task_id=task_id, due_at=due.isoformat(), **data)
    # A closed case needs no work: its task is closed at once. No closing can slip between
    # this read and the commit: the event above locked the case's planned instant
    # (`plan_state.invalidate`), which a closing locks too (its events) before it closes
    # the tasks. So a closing that came first has committed before this read, and one
    # that comes later waits for this transaction and then sees the task. (No lock on the
    # case row: callers hold that instant already, and would deadlock with a payment.)
    status = conn.execute(select(cases_t.c.status).where(cases_t.c.case_id == case_id)).scalar_one()
    if CASE_STATUS_OF[status] in CLOSED_STATUSES:
        close_tasks(conn, [case_id], now, task_closing_note(CASE_STATUS_OF[status], None), task_id=task_id)
    return int(task_id)


#: What counts as the debtor answering (for `escalate`): any of these on the case.
RESPONSE_EVENTS = (EventKind.REPLY_RECEIVED, EventKind.KEYWORD_RECEIVED, EventKind.KEYPRESS,
                   EventKind.LINK_CLICKED, EventKind.PAYMENT_RECORDED, EventKind.OPTED_OUT)
#: a stage reminder that reached the debtor (`policy.reach`: never an e-mail by its status)
_DELIVERED = or_(*(and_(messages_t.c.channel == channel.value,
                        messages_t.c.status.in_(sorted(s.value for s in statuses)))
                   for channel, statuses in DELIVERED_STATUSES.items() if statuses))
#: deliveries older than this (past the escalation age) are not looked at any more
_ESCALATE_LOOKBACK = dt.timedelta(days=30)


def open_escalations(engine: Engine, config: Config, now: dt.datetime, *, limit: int = 5000) -> int:
    """Open an `escalate` task (once per case and stage) for every active case, not on
    hold, that has not answered (`RESPONSE_EVENTS`) since a stage reminder was delivered
    to it `escalate_after_days` or more ago. Returns how many were opened."""
    cutoff = now - dt.timedelta(days=config.workbench.escalate_after_days)
    m = messages_t.c
    delivered = and_(
        m.kind == MessageKind.SCHEDULED.value, m.stage.is_not(None),
        _DELIVERED,
        m.status_at <= cutoff, m.status_at > cutoff - _ESCALATE_LOOKBACK,
        # implied by the two above (a message is sent after it is scheduled, delivered
        # within days), stated so that ix_messages_due (status, scheduled_at) answers
        m.scheduled_at <= cutoff, m.scheduled_at > cutoff - _ESCALATE_LOOKBACK - dt.timedelta(days=7),
    )
    answered = exists().where(events_t.c.case_id == m.case_id, events_t.c.at >= m.status_at,
                              events_t.c.kind.in_([k.value for k in RESPONSE_EVENTS]))
    tasked = exists().where(tasks_t.c.case_id == m.case_id, tasks_t.c.kind == TaskKind.ESCALATE.value,
                            tasks_t.c.source == literal("stage:").concat(m.stage))
    # a case on hold (a collector's, legal, a dispute, ...) is someone's already
    held = exists().where(holds_t.c.case_id == m.case_id, holds_t.c.released_at.is_(None),
                          or_(holds_t.c.until.is_(None), holds_t.c.until > now))
    query = (
        select(m.case_id, m.stage, func.min(m.status_at).label("delivered_at"))
        .join(cases_t, cases_t.c.case_id == m.case_id)
        .where(delivered, cases_t.c.status == CaseStatus.ACTIVE.value, ~answered, ~tasked, ~held)
        .group_by(m.case_id, m.stage)
        .order_by(m.case_id, m.stage)
        .limit(limit)
    )
    with engine.connect() as conn:
        due = conn.execute(query).all()
    opened = 0
    for row in due:
        with engine.begin() as conn:
            days = config.workbench.escalate_after_days
            if open_task(conn, config, row.case_id, TaskKind.ESCALATE, now, source=f"stage:{row.stage}",
                         detail=f"no answer {days} days after the {row.stage} reminder delivered"
                                f" {row.delivered_at.isoformat()}",
                         actor="system", stage=row.stage, delivered_at=row.delivered_at.isoformat()):
                opened += 1
    if opened:
        log.info("escalate: %d case(s) without an answer to their stage reminder", opened)
    return opened


# --------------------------------------------------------------------------- working


class Tasks:
    """Claim, close and list tasks (and open them for callers without a transaction of
    their own). Thread-safe (each call uses its own connection)."""

    def __init__(self, engine: Engine, config: Config | None, clock: Clock) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock

    def open(self, conn: Connection | None, case_id: str, kind: TaskKind | str, detail: str,
             now: dt.datetime | None = None, *, source: str, actor: str | None = None, **data: Any) -> int | None:
        """`open_task` in `conn`'s transaction, or in a new one when `conn` is None."""
        now = now or self.clock.now()
        if conn is not None:
            return open_task(conn, self.config, case_id, kind, now, source=source, detail=detail, actor=actor,
                             **data)
        with self.engine.begin() as own:
            return open_task(own, self.config, case_id, kind, now, source=source, detail=detail, actor=actor,
                             **data)

    def get(self, task_id: int) -> Task:
        with self.engine.connect() as conn:
            row = conn.execute(select(tasks_t).where(tasks_t.c.id == task_id)).first()
        if row is None:
            raise TaskNotFound(task_id)
        return _task(row)

    def claim(self, task_id: int, by: str) -> Task:
        """Take an open task (`task_claimed` event). Claiming one's own claimed task
        again changes nothing; a task claimed by another or done is `TaskConflict`."""
        now = self.clock.now()
        t = tasks_t.c
        with self.engine.begin() as conn:
            claimed = conn.execute(
                update(tasks_t).where(t.id == task_id, t.state == TaskState.OPEN.value)
                .values(state=TaskState.CLAIMED.value, assignee=by, claimed_at=now)
                .returning(t.case_id, t.kind)
            ).first()
            if claimed is not None:
                record_event(conn, EventKind.TASK_CLAIMED, now, case_id=claimed.case_id, actor=by,
                             task_id=task_id, task=claimed.kind)
        task = self.get(task_id)
        if claimed is None and not (task.state == TaskState.CLAIMED and task.assignee == by):
            raise TaskConflict(f"task {task_id} is {task.state}"
                               + (f" by {task.assignee}" if task.assignee else "") + "; it cannot be claimed")
        return task

    def done(self, task_id: int, by: str, note: str) -> Task:
        """Close an open or claimed task with a note on what was done (`task_done` event
        with the note). A task done already is `TaskConflict`."""
        note = note.strip()
        if not note:
            raise ValueError("say what was done: a task is closed with a note")
        if any(unicodedata.category(ch) == "Cc" and ch not in "\n\r\t" for ch in note):
            raise ValueError("the note contains control characters; send plain text")
        now = self.clock.now()
        t = tasks_t.c
        with self.engine.begin() as conn:
            closed = conn.execute(
                update(tasks_t).where(t.id == task_id, t.state != TaskState.DONE.value)
                .values(state=TaskState.DONE.value, done_at=now, done_by=by, note=note[:_NOTE_MAX],
                        assignee=func.coalesce(t.assignee, by))
                .returning(t.case_id, t.kind)
            ).first()
            if closed is not None:
                record_event(conn, EventKind.TASK_DONE, now, case_id=closed.case_id, actor=by, task_id=task_id,
                             task=closed.kind, note=note[:_NOTE_MAX])
        task = self.get(task_id)
        if closed is None:
            raise TaskConflict(f"task {task_id} was done already (by {task.done_by})")
        return task

    def list(self, state: str | None = TaskState.OPEN.value, kind: str | None = None, assignee: str | None = None,
             limit: int = 100, *, case_id: str | None = None) -> list[Task]:
        """Tasks, overdue first: by due time, then age. `state` None or "all": any state;
        "open" alone means open; "active": open or claimed."""
        t = tasks_t.c
        query = select(tasks_t)
        if state == "active":
            query = query.where(t.state.in_([TaskState.OPEN.value, TaskState.CLAIMED.value]))
        elif state not in (None, "all"):
            query = query.where(t.state == TaskState(state).value)
        if kind:
            query = query.where(t.kind == TaskKind(kind).value)
        if assignee:
            query = query.where(t.assignee == assignee)
        if case_id:
            query = query.where(t.case_id == case_id)
        query = query.order_by(t.due_at, t.created_at, t.id).limit(max(1, min(limit, 1000)))
        with self.engine.connect() as conn:
            return [_task(row) for row in conn.execute(query)]

    def for_cases(self, case_ids: Sequence[str]) -> builtins.list[Task]:
        """The open and claimed tasks of these cases, overdue first."""
        t = tasks_t.c
        with self.engine.connect() as conn:
            return [_task(r) for r in conn.execute(
                select(tasks_t).where(t.case_id.in_(list(case_ids)),
                                      t.state != TaskState.DONE.value).order_by(t.due_at, t.id))]


__all__ = ["CaseNotFound", "Task", "TaskConflict", "TaskKind", "TaskNotFound", "TaskState", "Tasks",
           "due_at", "open_escalations", "open_task"]
