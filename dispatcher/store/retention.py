"""The retention purge: communication records older than the archive period go, in
small transactions.

Each transaction takes the next `batch` primary keys of a table (an index range, whatever
the rows' age) and deletes those among them older than the cutoff, so it holds only
those rows' locks for a moment: the planner and the sender, which write the same tables
all day, never wait behind one long delete, and a table of any size is walked once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from dispatcher.store.tables import dedupe_keys_t, events_t, idempotency_keys_t, link_tokens_t, messages_t


def _purge(engine: Engine, table: Any, key: Any, at: Any, cutoff: dt.datetime, batch: int,
           stop: Callable[[], bool]) -> int:
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
            if table is messages_t:  # a message's payment-link tokens go with it
                old = select(key).where(key.in_(keys), at < cutoff)
                conn.execute(delete(link_tokens_t).where(link_tokens_t.c.message_id.in_(old)))
            removed += conn.execute(delete(table).where(key.in_(keys), at < cutoff)).rowcount
    return removed


def purge_older_than(engine: Engine, cutoff: dt.datetime, now: dt.datetime | None = None, *, batch: int = 5000,
                     stop: Callable[[], bool] = lambda: False) -> tuple[int, int]:
    """Delete messages (with their payment-link tokens), events and webhook dedupe keys
    older than `cutoff`, `batch` keys per transaction, and the API's stored idempotent
    answers expired at `now`; `stop()` is asked between transactions (the daemon is
    stopping). Returns (messages, events) removed."""
    if now is not None and not stop():  # replayed for 24 hours only (web.idempotency); a small table
        with engine.begin() as conn:
            conn.execute(delete(idempotency_keys_t).where(idempotency_keys_t.c.expires_at < now))
    messages = _purge(engine, messages_t, messages_t.c.id, messages_t.c.created_at, cutoff, batch, stop)
    events = _purge(engine, events_t, events_t.c.id, events_t.c.at, cutoff, batch, stop)
    # a webhook step's key outlives no provider's retries, but lives as long as its events
    _purge(engine, dedupe_keys_t, dedupe_keys_t.c.key, dedupe_keys_t.c.at, cutoff, batch, stop)
    return messages, events
