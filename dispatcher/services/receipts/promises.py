"""Broken promises: releasing `promise_to_pay` holds whose date has passed.

Run by the daemon after each planning pass (and by `dispatcher plan`). A promise kept
(a payment came in since it was made) is released silently; a broken one is released
with a `promise_broken` event, a `broken_promise` task, and the hold's note `repository.BROKEN_PROMISE_NOTE`, which
the snapshot reads: contact resumes with the next stage's firmer wording until a
payment is recorded.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from dispatcher.config import Config
from dispatcher.domain import Reason
from dispatcher.policy.replies import promise_broken
from dispatcher.services.receipts.actors import ACTOR_SYSTEM
from dispatcher.services.tasks import TaskKind, open_task
from dispatcher.store import repository
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.tables import holds_t, payments_t

log = logging.getLogger("dispatcher.receipts")


def resume_broken_promises(engine: Engine, now: dt.datetime, config: Config | None = None) -> int:
    """Release every `promise_to_pay` hold whose date has passed: with a
    `promise_broken` event when no payment was recorded since it was placed (contact
    resumes, and the next templates can be firmer), silently when one was. Returns the
    number of broken promises, each of which also opens a `broken_promise` task (SLA
    from `config`, the defaults without one). Safe to run on several instances at once:
    each hold is released by one conditional update."""
    h = holds_t.c
    paid_since = (
        select(func.count())
        .where(payments_t.c.case_id == h.case_id, payments_t.c.at >= h.placed_at)
        .scalar_subquery()
    )
    with engine.connect() as conn:
        due = conn.execute(
            select(h.id, h.case_id, h.until, h.placed_at, paid_since.label("payments"))
            .where(h.reason == Reason.PROMISE_TO_PAY.value, h.released_at.is_(None), h.until.is_not(None),
                   h.until <= now)
            .order_by(h.id)
        ).all()
    broken = 0
    for hold in due:
        is_broken = promise_broken(hold.until, now, paid_since_promise=hold.payments > 0)
        with engine.begin() as conn:
            released = conn.execute(
                update(holds_t)
                .where(h.id == hold.id, h.released_at.is_(None))
                .values(released_at=now, released_by=ACTOR_SYSTEM,
                        # the snapshot reads this note: firmer templates until a payment
                        note=repository.BROKEN_PROMISE_NOTE if is_broken else h.note)
            ).rowcount
            if not released:
                continue
            record_event(conn, EventKind.HOLD_RELEASED, now, case_id=hold.case_id, actor=ACTOR_SYSTEM,
                         hold_id=hold.id, reason=Reason.PROMISE_TO_PAY.value,
                         why="promise broken" if is_broken else "promise kept")
            if is_broken:
                record_event(conn, EventKind.PROMISE_BROKEN, now, case_id=hold.case_id, actor=ACTOR_SYSTEM,
                             hold_id=hold.id, promised_by=hold.until.isoformat())
                open_task(conn, config, hold.case_id, TaskKind.BROKEN_PROMISE, now, source=f"hold:{hold.id}",
                          actor=ACTOR_SYSTEM, hold_id=hold.id,
                          detail=f"no payment by the promised {hold.until.isoformat()}")
                broken += 1
    if broken:
        log.info("resumed contact on %d broken promise(s) to pay", broken)
    return broken
