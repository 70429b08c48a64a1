"""The retention purge removes exactly what is older than the cutoff, a few rows per
transaction, on both stores."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import event, func, insert, select
from sqlalchemy.engine import Engine

from dispatcher.store.retention import purge_older_than
from dispatcher.store.tables import cases_t, dedupe_keys_t, events_t, messages_t

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
