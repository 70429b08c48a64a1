"""Closing a case closes its tasks, on SQLite and PostgreSQL: a payment in full, a kept
plan's waiver and an import that closes a case each close the case's open and claimed
tasks as done by the system with a note saying why (a `task_done` event each), cancel
its queued messages and record one `case_closed` event; a task opened on a closed case
is closed at once, also when the opening and the closing run at the same time."""

from __future__ import annotations

import datetime as dt
import json
import threading
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from test_store_contract import NOW, add_message, import_cases, make_case

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.domain import CaseStatus
from dispatcher.services.case_actions import CaseActions
from dispatcher.services.tasks import TaskConflict, TaskKind, Tasks, open_task
from dispatcher.store import repository as repo
from dispatcher.store.tables import events_t, messages_t, tasks_t

LATER = NOW + dt.timedelta(hours=3)


def tasks_of(engine: Engine, case_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return {r.kind: r for r in conn.execute(select(tasks_t).where(tasks_t.c.case_id == case_id))}


def events(engine: Engine, case_id: str, kind: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(events_t).where(events_t.c.case_id == case_id, events_t.c.kind == kind)
                                 .order_by(events_t.c.id)))


def with_tasks(engine: Engine, config: Config, case_id: str) -> Tasks:
    """Three tasks on the case: one open, one claimed by a collector, one done by her."""
    tasks = Tasks(engine, config, FakeClock(NOW))
    ids = [tasks.open(None, case_id, kind, "detail", NOW, source="test")
           for kind in (TaskKind.READ_REPLY, TaskKind.REVIEW_DISPUTE, TaskKind.VERIFY_PAYMENT_CLAIM)]
    assert all(ids)
    tasks.claim(ids[1], "王伟")  # type: ignore[arg-type]
    tasks.done(ids[2], "王伟", "checked the bank feed")  # type: ignore[arg-type]
    return tasks


def assert_closed_by_the_system(engine: Engine, case_id: str, note: str) -> None:
    found = tasks_of(engine, case_id)
    for kind in ("read_reply", "review_dispute"):
        task = found[kind]
        assert (task.state, task.done_by, task.note, task.done_at) == ("done", "system", note, LATER)
    assert found["review_dispute"].assignee == "王伟"  # who had claimed it stays on record
    assert (found["verify_payment_claim"].done_by, found["verify_payment_claim"].note) == (
        "王伟", "checked the bank feed")  # done before: untouched
    closed = [(e.actor, json.loads(e.data)["task"], json.loads(e.data)["note"])
              for e in events(engine, case_id, "task_done") if e.at == LATER]
    assert sorted(closed) == [("system", "read_reply", note), ("system", "review_dispute", note)]


def test_a_payment_in_full_closes_the_cases_tasks(engine: Engine, config: Config) -> None:
    import_cases(engine, make_case("C1"), make_case("C2", phone="+8613900000002"))
    tasks = with_tasks(engine, config, "C1")
    with_tasks(engine, config, "C2")
    with engine.begin() as conn:
        queued = add_message(conn, "C1", "sms", "queued", LATER)
        repo.record_payment(conn, "C1", Decimal("25.75"), "王伟", LATER)  # a part: nothing closes
    assert tasks_of(engine, "C1")["read_reply"].state == "open"
    outcome = CaseActions(engine, config, FakeClock(LATER)).payment("C1", Decimal("1000.00"), "王伟")
    assert outcome["closed"] is True and outcome["cancelled_message_ids"] == [queued]
    assert_closed_by_the_system(engine, "C1", "case closed: paid in full")
    [closing] = events(engine, "C1", "case_closed")
    assert (closing.actor, json.loads(closing.data)) == ("王伟", {"reason": "paid_in_full", "status": "paid"})
    # the collectors' queue no longer lists them; the other case's tasks are still there
    assert {t.case_id for t in tasks.list("active")} == {"C2"}
    assert {t.state for t in tasks_of(engine, "C2").values()} == {"open", "claimed", "done"}
    # a collector who still had it open in her browser is told it is done, and by whom
    with pytest.raises(TaskConflict, match="by system"):
        tasks.done(tasks_of(engine, "C1")["review_dispute"].id, "王伟", "called back")
    # a further payment on the closed case closes nothing again
    with engine.begin() as conn:
        repo.record_payment(conn, "C1", Decimal("1.00"), "bank", LATER + dt.timedelta(days=1))
    assert len(events(engine, "C1", "case_closed")) == 1 and len(events(engine, "C1", "task_done")) == 3


def test_a_kept_plans_waiver_closes_the_cases_tasks(engine: Engine, config: Config) -> None:
    import_cases(engine, make_case("S1"))
    with_tasks(engine, config, "S1")
    with engine.begin() as conn:
        assert repo.settle_case(conn, "S1", "system", LATER, reason="plan_kept_penalty_waived")
    assert_closed_by_the_system(engine, "S1", "case closed: repayment plan kept, the rest waived")


@pytest.mark.parametrize("status", [CaseStatus.CLOSED, CaseStatus.PAID, CaseStatus.SETTLED])
def test_an_import_that_closes_a_case_closes_its_tasks(engine: Engine, config: Config, status: CaseStatus) -> None:
    import_cases(engine, make_case("I1"), make_case("I2", phone="+8613900000002"))
    with_tasks(engine, config, "I1")
    with engine.begin() as conn:
        queued = add_message(conn, "I1", "sms", "queued", LATER)
    import_cases(engine, make_case("I1", status=status), make_case("I2", phone="+8613900000002"), now=LATER)
    assert_closed_by_the_system(engine, "I1", f"case closed: marked {status.value} by an import")
    [closing] = events(engine, "I1", "case_closed")
    assert (closing.actor, json.loads(closing.data)) == ("import", {"reason": "imported", "status": status.value})
    with engine.connect() as conn:
        assert conn.execute(select(messages_t.c.status).where(messages_t.c.id == queued)).scalar() == "cancelled"
    assert events(engine, "I2", "case_closed") == []  # still active
    # the same file again: the case was closed already, nothing closes twice
    import_cases(engine, make_case("I1", status=status), now=LATER + dt.timedelta(days=1))
    assert len(events(engine, "I1", "case_closed")) == 1


def test_an_import_that_lowers_the_amount_below_the_payments_closes_the_case(engine: Engine, config: Config) -> None:
    import_cases(engine, make_case("L1"))
    with_tasks(engine, config, "L1")
    with engine.begin() as conn:
        repo.record_payment(conn, "L1", Decimal("1000.00"), "bank", NOW)
    import_cases(engine, make_case("L1", amount_due=Decimal("1000.00")), now=LATER)
    assert_closed_by_the_system(engine, "L1", "case closed: paid in full")
    [closing] = events(engine, "L1", "case_closed")
    assert (closing.actor, json.loads(closing.data)) == ("import", {"reason": "paid_in_full", "status": "paid"})


def test_a_case_imported_closed_was_never_open(engine: Engine) -> None:
    import_cases(engine, make_case("N1", status=CaseStatus.PAID))
    assert events(engine, "N1", "case_closed") == []


def test_a_task_opened_on_a_closed_case_is_closed_at_once(engine: Engine, config: Config) -> None:
    import_cases(engine, make_case("D1", status=CaseStatus.SETTLED))
    with engine.begin() as conn:
        task_id = open_task(conn, config, "D1", TaskKind.READ_REPLY, LATER, source="sms:SM1", actor="sms")
    assert task_id is not None
    task = Tasks(engine, config, FakeClock(LATER)).get(task_id)
    assert (task.state, task.done_by, task.note) == (
        "done", "system", "case closed (settled) before this task was opened: nothing to do")
    assert [e.kind for e in events(engine, "D1", "collector_task") + events(engine, "D1", "task_done")] == [
        "collector_task", "task_done"]
    assert Tasks(engine, config, FakeClock(LATER)).list("active") == []


def _in_thread(work: Any) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(0.5)
    return thread


def test_a_task_opened_while_the_case_closes_ends_closed(engine: Engine, config: Config) -> None:
    """Whichever of the two transactions commits first, the task ends closed: the
    payment waits for the task's transaction, or the task's for the payment's."""
    import_cases(engine, make_case("R1"), make_case("R2", phone="+8613900000002"))

    def pay(case_id: str) -> Any:
        def run() -> None:
            with engine.begin() as conn:
                repo.record_payment(conn, case_id, Decimal("1025.75"), "bank", LATER)
        return run

    # the task's transaction first: the payment waits for it, then closes the task
    with engine.connect() as conn, conn.begin():
        first = open_task(conn, config, "R1", TaskKind.READ_REPLY, LATER, source="sms:SM1")
        payment = _in_thread(pay("R1"))
        assert payment.is_alive()  # it waits for this transaction
    payment.join(10)
    assert Tasks(engine, config, FakeClock(LATER)).get(first).state == "done"  # type: ignore[arg-type]

    # the payment's transaction first: the task's waits for it, then sees the case closed
    opened: list[int | None] = []

    def open_one() -> None:
        with engine.begin() as conn:
            opened.append(open_task(conn, config, "R2", TaskKind.READ_REPLY, LATER, source="sms:SM2"))

    with engine.connect() as conn, conn.begin():
        repo.record_payment(conn, "R2", Decimal("1025.75"), "bank", LATER)
        opening = _in_thread(open_one)
        assert opening.is_alive()
    opening.join(10)
    task = Tasks(engine, config, FakeClock(LATER)).get(opened[0])  # type: ignore[arg-type]
    assert (task.state, task.note) == ("done", "case closed (paid) before this task was opened: nothing to do")


def test_one_import_closes_many_cases_each_with_its_reason(engine: Engine, config: Config) -> None:
    phones = {f"B{i}": f"+86139000001{i:02d}" for i in range(6)}
    import_cases(engine, *(make_case(c, phone=p) for c, p in phones.items()))
    for case_id in phones:
        with_tasks(engine, config, case_id)
    with engine.begin() as conn:
        repo.record_payment(conn, "B3", Decimal("1000.00"), "bank", NOW)
    statuses = {"B0": CaseStatus.PAID, "B1": CaseStatus.SETTLED, "B2": CaseStatus.CLOSED, "B3": CaseStatus.ACTIVE,
                "B4": CaseStatus.CLOSED, "B5": CaseStatus.ACTIVE}
    import_cases(engine, *(make_case(c, phone=phones[c], status=s, amount_due=Decimal("1000.00"))
                           for c, s in statuses.items()), now=LATER)
    notes = {"B0": "case closed: marked paid by an import", "B1": "case closed: marked settled by an import",
             "B2": "case closed: marked closed by an import", "B3": "case closed: paid in full",
             "B4": "case closed: marked closed by an import"}
    for case_id, note in notes.items():
        assert_closed_by_the_system(engine, case_id, note)
        assert len(events(engine, case_id, "case_closed")) == 1
    assert {t.state for t in tasks_of(engine, "B5").values()} == {"open", "claimed", "done"}
