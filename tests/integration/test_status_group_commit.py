"""SQLite status writes are group-committed: concurrent callbacks share transactions, each
still gets its own outcome, and one bad callback fails only itself."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from pathlib import Path

from sqlalchemy import event, func, insert, select
from sqlalchemy.exc import StatementError

from dispatcher.domain import Channel, MessageStatus
from dispatcher.services.receipts.hot_path import StatusSQL
from dispatcher.store.db import ensure_schema, make_engine
from dispatcher.store.tables import cases_t, events_t, messages_t

NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)


def _seed(engine, messages: int) -> list[int]:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(insert(cases_t), [{
            "case_id": "G1", "name": "Group Commit", "jurisdiction": "cn", "locale": "zh-CN", "currency": "CNY",
            "principal": Decimal("100.00"), "interest": Decimal("0.00"), "penalty": Decimal("0.00"),
            "fees": Decimal("0.00"), "amount_due": Decimal("100.00"), "paid_total": Decimal("0.00"),
            "due_date": dt.date(2026, 10, 1), "status": "active", "product": "other", "zones": "Asia/Shanghai",
            "escalated_stages": "", "created_at": NOW, "updated_at": NOW}])
        conn.execute(insert(messages_t), [
            {"case_id": "G1", "channel": "sms", "kind": "scheduled", "status": "sent", "provider_id": f"SM{n:032x}",
             "idempotency_key": f"g:{n}", "scheduled_at": NOW, "created_at": NOW, "to_address": "+8613800000000"}
            for n in range(messages)])
        return [row[0] for row in conn.execute(select(messages_t.c.id).order_by(messages_t.c.id))]


async def test_concurrent_callbacks_share_commits_and_keep_their_own_outcomes(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    ensure_schema(engine)
    ids = _seed(engine, 60)
    status_sql = StatusSQL(engine)
    commits = 0



    @event.listens_for(engine, "commit")
    def _count(_conn) -> None:  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1

    try:
        calls = [status_sql.apply_async(Channel.SMS, f"SM{n:032x}", MessageStatus.DELIVERED, ids[n], NOW, None, "{}")
                 for n in range(50)]
        # a duplicate of the first callback, and a late lower status for the second
        calls.append(status_sql.apply_async(Channel.SMS, f"SM{0:032x}", MessageStatus.DELIVERED, ids[0], NOW, None,
                                            "{}"))
        calls.append(status_sql.apply_async(Channel.SMS, f"SM{1:032x}", MessageStatus.SENT, ids[1], NOW, None, "{}"))
        results = await asyncio.gather(*calls)
        grouped_commits = commits
        # a callback the store refuses (a naive instant) in a batch with good ones: it alone fails
        calls = [status_sql.apply_async(Channel.SMS, f"SM{n:032x}", MessageStatus.DELIVERED, ids[n], NOW, None, "{}")
                 for n in range(50, 60)]
        calls.insert(3, status_sql.apply_async(Channel.SMS, f"SM{2:032x}", MessageStatus.READ, ids[2],
                                               NOW.replace(tzinfo=None), None, "{}"))
        mixed = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        status_sql.close()
    matches, duplicate, late = results[:50], results[50], results[51]
    assert all(m is not None and m.applied for m in matches)
    assert duplicate is not None and not duplicate.applied and duplicate.status == "delivered"
    assert late is not None and not late.applied and late.status == "delivered"
    assert grouped_commits < 10  # 52 callbacks, a few transactions
    bad = mixed.pop(3)
    assert isinstance(bad, StatementError) and "naive" in str(bad)
    assert all(not isinstance(m, BaseException) and m is not None and m.applied for m in mixed)
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(messages_t.c.status, func.count()).group_by(
            messages_t.c.status)).all())
        events = conn.execute(select(func.count()).select_from(events_t)).scalar_one()
    engine.dispose()
    assert statuses == {"delivered": 60}
    assert events == 60  # one per status that moved, none for the duplicate, the late one or the bad one
