"""The collectors' task queue on SQLite and PostgreSQL: every source opens exactly one
task (a second broken-promise or planning pass: still one; the webhook sources, a
re-delivered SMS or a repeated keypress, are in test_webhooks.py),
the queue lists the overdue first, claim and done are events with `by`, and a case that
does not answer a delivered stage reminder gets one `escalate` task per stage."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from test_store_contract import NOW, import_cases, make_case

from dispatcher.clock import FakeClock
from dispatcher.config import Config, Workbench, parse_sla
from dispatcher.domain import Action, CaseStatus, Decision, Reason
from dispatcher.policy import Gate
from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.services.planner import enqueue_decisions
from dispatcher.services.receipts import resume_broken_promises
from dispatcher.services.tasks import TaskConflict, TaskKind, Tasks, due_at, open_escalations, open_task
from dispatcher.store import repository as repo
from dispatcher.store.snapshots import get_snapshot
from dispatcher.store.tables import events_t, messages_t, tasks_t

SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def task_rows(engine: Engine, kind: str | None = None) -> list[Any]:
    query = select(tasks_t).order_by(tasks_t.c.id)
    if kind:
        query = query.where(tasks_t.c.kind == kind)
    with engine.connect() as conn:
        return list(conn.execute(query))


def events_of(engine: Engine, kind: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(events_t).where(events_t.c.kind == kind).order_by(events_t.c.id)))


# --------------------------------------------------------------- the planner's sources


def test_a_broken_promise_opens_one_task(engine: Engine, config: Config) -> None:
    import_cases(engine, make_case("P1"), make_case("K1"))
    until = NOW + dt.timedelta(days=2)
    with engine.begin() as conn:
        hold_id = repo.place_hold(conn, "P1", Reason.PROMISE_TO_PAY, until, "ivr", NOW)
        repo.place_hold(conn, "K1", Reason.PROMISE_TO_PAY, until, "ivr", NOW)
        repo.record_payment(conn, "K1", Decimal("100.00"), "bank-feed", NOW + dt.timedelta(days=1))
    later = NOW + dt.timedelta(days=3)
    assert resume_broken_promises(engine, later, config) == 1
    assert resume_broken_promises(engine, later + dt.timedelta(hours=1), config) == 0
    (task,) = task_rows(engine)
    assert (task.case_id, task.kind, task.source) == ("P1", "broken_promise", f"hold:{hold_id}")


def test_a_legal_hand_off_opens_one_task(engine: Engine, config: Config) -> None:
    import_cases(engine, make_case("L1", due_date=dt.date(2026, 8, 1)))
    snapshot = get_snapshot(engine, "L1", NOW)
    decision = Decision("L1", "dpd90", None, Action.ESCALATE, Reason.LEGAL_HANDOFF, detail="entered dpd90")
    for _ in range(2):
        with engine.begin() as conn:
            enqueue_decisions(conn, [(snapshot, [decision])], NOW, config=config)
    (task,) = task_rows(engine)
    assert (task.case_id, task.kind, task.source) == ("L1", "legal_handoff", "stage:dpd90")
    assert task.due_at == dt.datetime(2026, 12, 14, 2, 0, tzinfo=dt.UTC)  # 5 working days: Mon -> next Mon


def _delivered(engine: Engine, case_id: str, stage: str, at: dt.datetime, channel: str = "sms",
               status: str = "delivered") -> None:
    with engine.begin() as conn:
        conn.execute(insert(messages_t).values(
            case_id=case_id, channel=channel, stage=stage, kind="scheduled", status=status,
            idempotency_key=f"{case_id}:{channel}:{stage}:{at.isoformat()}", scheduled_at=at, created_at=at,
            sent_at=at, status_at=at, attempts=1, conversation=False))


def test_no_answer_after_a_delivered_reminder_escalates_once_per_stage(engine: Engine, config: Config) -> None:
    import_cases(engine, make_case("E1"), make_case("E2", phone="+8613900000002"), make_case("E3"),
                 make_case("E4", phone="+8613900000004"))
    _delivered(engine, "E1", "dpd30", NOW)  # no answer: escalated after 3 days
    _delivered(engine, "E2", "dpd30", NOW)  # answers the day after: not escalated
    _delivered(engine, "E3", "dpd30", NOW, status="failed")  # never delivered: nothing to escalate
    _delivered(engine, "E4", "dpd30", NOW, channel="voice", status="completed")  # a call that reached them
    with engine.begin() as conn:
        conn.execute(insert(events_t).values(case_id="E2", at=NOW + dt.timedelta(days=1), kind="reply_received",
                                             actor="sms", data="{}"))
    assert open_escalations(engine, config, NOW + dt.timedelta(days=2, hours=23)) == 0  # not yet 3 days
    assert open_escalations(engine, config, NOW + dt.timedelta(days=3)) == 2
    assert open_escalations(engine, config, NOW + dt.timedelta(days=4)) == 0  # once per stage
    assert sorted((r.case_id, r.kind, r.source) for r in task_rows(engine)) == [
        ("E1", "escalate", "stage:dpd30"), ("E4", "escalate", "stage:dpd30")]
    # the next stage's reminder, unanswered too: a second escalation
    _delivered(engine, "E1", "dpd60", NOW + dt.timedelta(days=30))
    assert open_escalations(engine, config, NOW + dt.timedelta(days=33)) == 1
    # a case on hold is someone's already
    import_cases(engine, make_case("E5", phone="+8613900000005"))
    _delivered(engine, "E5", "dpd30", NOW + dt.timedelta(days=30))
    with engine.begin() as conn:
        repo.place_hold(conn, "E5", Reason.LEGAL_HOLD, None, "合规张", NOW + dt.timedelta(days=31))
    assert open_escalations(engine, config, NOW + dt.timedelta(days=34)) == 0
    # a paid case is left alone
    with engine.begin() as conn:
        repo.record_payment(conn, "E2", Decimal("1025.75"), "bank", NOW + dt.timedelta(days=40))
    _delivered(engine, "E2", "dpd60", NOW + dt.timedelta(days=30))
    assert open_escalations(engine, config, NOW + dt.timedelta(days=45)) == 0


def test_an_email_only_sent_is_not_a_delivered_reminder(engine: Engine, config: Config) -> None:
    """SMTP gives no delivery receipt: an e-mail whose status is `sent` may never have
    reached anyone, so it is no unanswered reminder to escalate (a clicked one is an answer)."""
    import_cases(engine, make_case("M1"), make_case("M2", phone="+8613900000002"),
                 make_case("M3", phone="+8613900000003"))
    _delivered(engine, "M1", "dpd30", NOW, channel="email", status="sent")
    _delivered(engine, "M2", "dpd30", NOW, channel="email", status="sent_unconfirmed")
    _delivered(engine, "M3", "dpd30", NOW, channel="sms", status="sent")  # no receipt (yet) either
    assert open_escalations(engine, config, NOW + dt.timedelta(days=4)) == 0
    assert task_rows(engine) == []
    # the same case with an SMS that was delivered: escalated, for that reminder
    _delivered(engine, "M1", "dpd30", NOW + dt.timedelta(hours=1))
    assert open_escalations(engine, config, NOW + dt.timedelta(days=4)) == 1
    (task,) = task_rows(engine)
    assert (task.case_id, task.source) == ("M1", "stage:dpd30")
    assert json.loads(events_of(engine, "collector_task")[0].data)["delivered_at"] == (
        NOW + dt.timedelta(hours=1)).isoformat()


def test_escalate_after_days_comes_from_the_configuration(engine: Engine, config: Config) -> None:
    config = config.model_copy(update={"workbench": Workbench(escalate_after_days=1)})
    import_cases(engine, make_case("E1"))
    _delivered(engine, "E1", "dpd30", NOW)
    assert open_escalations(engine, config, NOW + dt.timedelta(days=1)) == 1


def test_the_planner_opens_escalations(engine: Engine, config: Config) -> None:
    from dispatcher.services.planner import run_planner

    import_cases(engine, make_case("E1", status=CaseStatus.PAID))
    _delivered(engine, "E1", "dpd30", NOW)
    summary = run_planner(engine, Gate(config), {}, NOW + dt.timedelta(days=3))
    assert summary is not None and summary.escalate_tasks == 0  # paid: nobody to escalate
    import_cases(engine, make_case("E2"))
    _delivered(engine, "E2", "dpd30", NOW)
    summary = run_planner(engine, Gate(config), {}, NOW + dt.timedelta(days=3))
    assert summary is not None and summary.escalate_tasks == 1


# ---------------------------------------------------------------------- SLA and queue


def test_sla_texts() -> None:
    assert parse_sla("1 working day") == (1, "working_days")
    assert parse_sla("2 Working Days") == (2, "working_days")
    assert parse_sla("4 hours") == (4, "hours") and parse_sla("3 days") == (3, "days")
    for bad in ("soon", "0 hours", "1 week", "-1 days"):
        with pytest.raises(ValueError, match="working days"):
            parse_sla(bad)
    with pytest.raises(ValueError, match="unknown task kind"):
        Workbench(sla={"make_tea": "1 hour"})


def test_a_working_day_sla_skips_the_weekend_and_holidays(engine: Engine, config: Config) -> None:
    import_cases(engine, make_case("S1"))
    friday = dt.datetime(2026, 12, 11, 15, 0, tzinfo=SHANGHAI)
    with engine.begin() as conn:
        task_id = open_task(conn, config, "S1", TaskKind.VERIFY_PAYMENT_CLAIM, friday, source="t1")
        # 2026-10-01..07 is China's National Day holiday: due after it
        holiday = dt.datetime(2026, 9, 30, 9, 0, tzinfo=SHANGHAI)
        other = open_task(conn, config, "S1", TaskKind.VERIFY_PAYMENT_CLAIM, holiday, source="t2")
    tasks = {t.id: t for t in Tasks(engine, config, FakeClock(friday)).list(state="all")}
    assert tasks[task_id].due_at == dt.datetime(2026, 12, 14, 15, 0, tzinfo=SHANGHAI)  # Monday
    assert tasks[other].due_at.astimezone(SHANGHAI).date() > dt.date(2026, 10, 7)


def test_the_queue_lists_the_overdue_first_then_by_due_time_and_age(engine: Engine, config: Config) -> None:
    import_cases(engine, make_case("Q1"), make_case("Q2"))
    clock = FakeClock(NOW)
    tasks = Tasks(engine, config, clock)
    with engine.begin() as conn:
        # opened first, due in 5 working days
        legal = open_task(conn, config, "Q1", TaskKind.LEGAL_HANDOFF, NOW, source="a")
        # opened an hour later, due in 4 hours
        call = open_task(conn, config, "Q2", TaskKind.CALL_BACK, NOW + dt.timedelta(hours=1), source="b")
        # opened two hours later, due in 1 working day
        paid = open_task(conn, config, "Q1", TaskKind.VERIFY_PAYMENT_CLAIM, NOW + dt.timedelta(hours=2), source="c")
        # the same due time as `paid`, older
        reply = open_task(conn, config, "Q2", TaskKind.READ_REPLY, NOW + dt.timedelta(hours=2), source="d")
    assert None not in (legal, call, paid, reply)
    clock.set(NOW + dt.timedelta(hours=6))  # the call back is overdue
    listed = tasks.list()
    assert [t.id for t in listed] == [call, paid, reply, legal]
    assert [t.overdue(clock.now()) for t in listed] == [True, False, False, False]
    assert [t.id for t in tasks.list(kind="read_reply")] == [reply]


def test_claim_and_done_are_events_with_by(engine: Engine, config: Config) -> None:
    import_cases(engine, make_case("C1"))
    clock = FakeClock(NOW)
    tasks = Tasks(engine, config, clock)
    task_id = tasks.open(None, "C1", TaskKind.READ_REPLY, "can I pay next month?", source="sms:SM1")
    assert task_id is not None
    assert tasks.open(None, "C1", TaskKind.READ_REPLY, "again", source="sms:SM1") is None  # the same source
    claimed = tasks.claim(task_id, "王伟")
    assert (claimed.state, claimed.assignee) == ("claimed", "王伟")
    assert tasks.claim(task_id, "王伟").state == "claimed"  # again by the same person: no change
    with pytest.raises(TaskConflict, match="claimed by 王伟"):
        tasks.claim(task_id, "agent7")
    assert [t.id for t in tasks.list(assignee="王伟", state="claimed")] == [task_id]
    with pytest.raises(ValueError, match="note"):
        tasks.done(task_id, "王伟", "  ")
    clock.advance(minutes=5)
    done = tasks.done(task_id, "王伟", "called back: will pay on the 15th")
    assert (done.state, done.done_by, done.note, done.done_at) == ("done", "王伟", "called back: will pay on the 15th",
                                                                   clock.now())
    with pytest.raises(TaskConflict, match="done already"):
        tasks.done(task_id, "agent7", "again")
    assert tasks.list() == []
    claimed_events = events_of(engine, "task_claimed")
    done_events = events_of(engine, "task_done")
    assert [(e.case_id, e.actor) for e in claimed_events] == [("C1", "王伟")]
    assert [(e.case_id, e.actor, json.loads(e.data)["note"]) for e in done_events] == [
        ("C1", "王伟", "called back: will pay on the 15th")]


def test_an_sla_into_next_year_is_not_a_use_of_its_estimated_calendar() -> None:
    """Only contact decisions count for the 'calendar estimated' warning, not due times."""
    calendar = WorkingCalendar("CN", official_years=(2026,))
    new_year_eve = dt.datetime(2026, 12, 31, 15, 0, tzinfo=SHANGHAI)
    due = due_at(Workbench(), "verify_payment_claim", new_year_eve, calendar, "Asia/Shanghai")
    assert due == dt.datetime(2027, 1, 4, 15, 0, tzinfo=SHANGHAI)  # New Year's Day (Fri), then the weekend
    assert calendar.estimated_years_used() == []
