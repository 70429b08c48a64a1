"""The retention purge: records older than the archive period go, in small transactions.

Communication records (messages with their payment-link tokens, events, webhook dedupe
keys) go once they are older than the cutoff. The other personal records go under the
same rule once their whole life ended before it: an agreement the debtor accepted (its
verbatim text) with its repayment plan and instalments, when it was accepted before the
cutoff and its plan ended before it too (a plan still being kept, or one that ended
later, keeps its agreement); a hold (its note) that ended before the cutoff (released,
or its `until` passed); a collector's task (the reply it quoted, the note) done before
it. What is still in force — a plan, a hold, an open task — stays whatever its age.

Each transaction takes the next `batch` primary keys of a table (an index range, whatever
the rows' age) and deletes those among them that are due, so it holds only those rows'
locks for a moment: the planner and the sender, which write the same tables all day,
never wait behind one long delete, and a table of any size is walked once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from dispatcher.store.tables import (
    agreements_t,
    dedupe_keys_t,
    events_t,
    holds_t,
    idempotency_keys_t,
    instalments_t,
    link_tokens_t,
    messages_t,
    plans_t,
    tasks_t,
)

#: What goes with the rows a page deletes (before them): (conn, the page's due keys).
_Dependents = Callable[[Connection, list[Any]], None]


def _purge(engine: Engine, table: Any, key: Any, due: ColumnElement[bool], batch: int, stop: Callable[[], bool],
           dependents: _Dependents | None = None) -> int:
    removed, last = 0, None
    while not stop():
        with engine.begin() as conn:
            page = select(key).order_by(key).limit(batch)
            if last is not None:
                page = page.where(key > last)
            keys = conn.execute(page).scalars().all()
            if not keys:
                break
            last = keys[-1]
            old = conn.execute(select(key).where(key.in_(keys), due)).scalars().all()
            if not old:
                continue
            if dependents is not None:
                dependents(conn, list(old))
            removed += conn.execute(delete(table).where(key.in_(old))).rowcount
    return removed


def _message_tokens(conn: Connection, old: list[Any]) -> None:
    """A message's payment-link tokens go with it."""
    conn.execute(delete(link_tokens_t).where(link_tokens_t.c.message_id.in_(old)))


def _agreement_plans(conn: Connection, old: list[Any]) -> None:
    """An agreement's plan and its instalments go with it."""
    plans = conn.execute(select(plans_t.c.id).where(plans_t.c.agreement_id.in_(old))).scalars().all()
    if plans:
        conn.execute(delete(instalments_t).where(instalments_t.c.plan_id.in_(plans)))
        conn.execute(delete(plans_t).where(plans_t.c.id.in_(plans)))


def purge_records(engine: Engine, cutoff: dt.datetime, now: dt.datetime | None = None, *, batch: int = 5000,
                  stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """Delete what the archive period no longer keeps (see the module's docstring), `batch`
    keys per transaction, and the API's stored idempotent answers expired at `now`;
    `stop()` is asked between transactions (the daemon is stopping). Returns the rows
    removed per kind: messages, events, agreements (with their plans), holds, tasks."""
    if now is not None and not stop():  # replayed for 24 hours only (web.idempotency); a small table
        with engine.begin() as conn:
            conn.execute(delete(idempotency_keys_t).where(idempotency_keys_t.c.expires_at < now))
    m, e, d = messages_t.c, events_t.c, dedupe_keys_t.c
    removed = {
        "messages": _purge(engine, messages_t, m.id, m.created_at < cutoff, batch, stop, _message_tokens),
        "events": _purge(engine, events_t, e.id, e.at < cutoff, batch, stop),
    }
    # a webhook step's key outlives no provider's retries, but lives as long as its events
    _purge(engine, dedupe_keys_t, d.key, d.at < cutoff, batch, stop)
    a, p, h, t = agreements_t.c, plans_t.c, holds_t.c, tasks_t.c
    plan_lives_on = exists().where(p.agreement_id == a.id, or_(p.ended_at.is_(None), p.ended_at >= cutoff))
    removed["agreements"] = _purge(engine, agreements_t, a.id, and_(a.accepted_at < cutoff, ~plan_lives_on),
                                   batch, stop, _agreement_plans)
    hold_ended = or_(h.released_at < cutoff, and_(h.released_at.is_(None), h.until < cutoff))
    removed["holds"] = _purge(engine, holds_t, h.id, hold_ended, batch, stop)
    removed["tasks"] = _purge(engine, tasks_t, t.id, and_(t.state == "done", t.done_at < cutoff), batch, stop)
    return removed


def purge_older_than(engine: Engine, cutoff: dt.datetime, now: dt.datetime | None = None, *, batch: int = 5000,
                     stop: Callable[[], bool] = lambda: False) -> tuple[int, int]:
    """`purge_records`, answering only (messages, events) removed."""
    removed = purge_records(engine, cutoff, now, batch=batch, stop=stop)
    return removed["messages"], removed["events"]
