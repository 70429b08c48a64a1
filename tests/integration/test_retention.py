"""The retention purge removes exactly what is older than the cutoff, a few rows per
transaction, on both stores: communication records, and the agreements, plans, holds and
closed tasks whose life ended before it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import event, func, insert, select
from sqlalchemy.engine import Engine

from dispatcher.store.retention import purge_older_than, purge_records
from dispatcher.store.tables import (
    agreements_t,
    cases_t,
    dedupe_keys_t,
    events_t,
    holds_t,
    instalments_t,
    messages_t,
    plans_t,
    tasks_t,
)

NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)
CUTOFF = NOW - dt.timedelta(days=5 * 365 + 1)


def test_the_purge_removes_old_records_in_small_transactions(engine: Engine) -> None:
    zero = Decimal("0.00")
    with engine.begin() as conn:
        conn.execute(insert(cases_t).values(
            case_id="R-1", name="R", jurisdiction="cn", locale="zh-CN", currency="CNY", principal=zero,
            interest=zero, penalty=zero, fees=zero, amount_due=zero, due_date=dt.date(2020, 1, 1), status="active",
            product="other", paid_total=zero, created_at=NOW, updated_at=NOW, zones="Asia/Shanghai",
            escalated_stages=""))
        for i in range(23):
            at = CUTOFF - dt.timedelta(days=1) if i % 3 else CUTOFF + dt.timedelta(days=1)  # 15 old, 8 kept
            conn.execute(insert(messages_t).values(
                case_id="R-1", channel="sms", kind="scheduled", status="delivered", idempotency_key=f"k{i}",
                scheduled_at=at, created_at=at, attempts=1, conversation=False))
            conn.execute(insert(events_t).values(case_id="R-1", at=at, kind="message_sent", data="{}"))
            conn.execute(insert(dedupe_keys_t).values(key=f"d{i}", at=at))
    commits: list[int] = []

    def count(_conn: object) -> None:
        commits.append(1)

    event.listen(engine, "commit", count)
    try:
        assert purge_older_than(engine, CUTOFF, batch=4) == (15, 15)
    finally:
        event.remove(engine, "commit", count)
    assert len(commits) >= 3 * (23 // 4)  # a transaction per 4 keys of each table
    with engine.connect() as conn:
        for table, column in ((messages_t, messages_t.c.created_at), (events_t, events_t.c.at),
                              (dedupe_keys_t, dedupe_keys_t.c.at)):
            assert conn.execute(select(func.count()).select_from(table)).scalar_one() == 8
            assert conn.execute(select(func.min(column))).scalar_one() > CUTOFF
    assert purge_older_than(engine, CUTOFF, batch=4) == (0, 0)
    assert purge_older_than(engine, NOW, batch=100, stop=lambda: True) == (0, 0)  # stopping: nothing starts


OLD, RECENT = CUTOFF - dt.timedelta(days=1), CUTOFF + dt.timedelta(days=1)


def _case(conn: Any, case_id: str) -> None:
    zero = Decimal("0.00")
    conn.execute(insert(cases_t).values(
        case_id=case_id, name="王伟", jurisdiction="cn", locale="zh-CN", currency="CNY", principal=zero,
        interest=zero, penalty=zero, fees=zero, amount_due=zero, due_date=dt.date(2020, 1, 1), status="active",
        product="other", paid_total=zero, created_at=NOW, updated_at=NOW, zones="Asia/Shanghai",
        escalated_stages=""))


def test_agreements_plans_holds_and_done_tasks_go_under_the_same_rule(engine: Engine) -> None:
    """What the debtor accepted (the agreement's verbatim text, its plan and instalments),
    the holds' notes and the collectors' closed tasks are personal records too: they go
    once their whole life ended before the cutoff, in small transactions; what is still
    in force (a plan being kept, a hold, an open task) stays whatever its age."""
    zero = Decimal("0.00")
    # (accepted, plan status, plan ended) -> purged?
    agreements = [(OLD, "broken", OLD, True), (OLD, "completed", OLD, True), (OLD, None, None, True),
                  (OLD, "completed", RECENT, False), (OLD, "active", None, False), (RECENT, "active", None, False),
                  (RECENT, "broken", RECENT, False), (OLD, "broken", OLD, True), (OLD, "broken", OLD, True)]
    holds = [(OLD, OLD, True), (RECENT, None, False), (OLD, None, True)]  # (until, released) -> purged?
    holds += [(None, OLD, True), (None, RECENT, False), (None, None, False)]
    tasks = [("done", OLD, True), ("done", RECENT, False), ("open", None, False), ("claimed", None, False)]
    with engine.begin() as conn:
        _case(conn, "R-2")
        for n, (accepted, status, ended, _gone) in enumerate(agreements):
            agreement = conn.execute(insert(agreements_t).values(
                case_id="R-2", kind="repayment_plan", locale="zh-CN", accepted_at=accepted, accepted_by="debtor",
                terms="{}", text=f"我，王伟，同意分期还款 {n}", content_hash="0" * 64)).inserted_primary_key[0]
            if status is not None:
                plan = conn.execute(insert(plans_t).values(
                    case_id="R-2", agreement_id=agreement, offer="three_months", status=status, created_at=accepted,
                    created_on=accepted.date(), paid_at_start=zero, total=zero, waived=zero,
                    ended_at=ended)).inserted_primary_key[0]
                conn.execute(insert(instalments_t), [{"plan_id": plan, "number": i, "due": accepted.date(),
                                                      "amount": zero} for i in (1, 2, 3)])
        for until, released, _gone in holds:
            conn.execute(insert(holds_t).values(case_id="R-2", reason="collector_hold", placed_at=OLD, until=until,
                                                placed_by="agent7", released_at=released, note="客户要求下周回电"))
        for n, (state, done, _gone) in enumerate(tasks):
            conn.execute(insert(tasks_t).values(case_id="R-2", kind="read_reply", source=f"reply:{n}", state=state,
                                                created_at=OLD, due_at=OLD, detail="我下周还", done_at=done,
                                                note="called back" if done else None))
    commits: list[int] = []

    def count(_conn: object) -> None:
        commits.append(1)

    event.listen(engine, "commit", count)
    try:
        removed = purge_records(engine, CUTOFF, batch=4)
    finally:
        event.remove(engine, "commit", count)
    kept_agreements = [n for n, a in enumerate(agreements) if not a[3]]
    assert removed["agreements"] == len(agreements) - len(kept_agreements) == 5
    assert removed["holds"] == 3 and removed["tasks"] == 1
    assert len(commits) >= len(agreements) // 4 + 2  # a transaction per 4 agreements, at least
    with engine.connect() as conn:
        texts = conn.execute(select(agreements_t.c.text).order_by(agreements_t.c.id)).scalars().all()
        assert [int(t.rsplit(" ", 1)[1]) for t in texts] == kept_agreements
        plans = conn.execute(select(plans_t.c.id, plans_t.c.agreement_id)).all()
        assert len(plans) == len(kept_agreements)  # every kept agreement here has a plan
        assert conn.execute(select(func.count()).select_from(instalments_t)).scalar_one() == 3 * len(plans)
        left = conn.execute(select(holds_t.c.until, holds_t.c.released_at).order_by(holds_t.c.id)).all()
        assert [(u is not None and u > CUTOFF, r is not None) for u, r in left] == [
            (True, False), (False, True), (False, False)]  # until later; released later; in force
        assert conn.execute(select(tasks_t.c.source).order_by(tasks_t.c.id)).scalars().all() == [
            "reply:1", "reply:2", "reply:3"]
    assert purge_records(engine, CUTOFF, batch=4) == dict.fromkeys(removed, 0)  # nothing twice
