"""Work for a person, opened on a case (a dispute to review, a broken plan to follow up).

One function, so the way tasks are stored can change in one place: today a task is a
`collector_task` event on the case, the same event the inbound-SMS receipts record.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.engine import Connection

from dispatcher.store.events import EventKind, record_event


def open_task(conn: Connection, case_id: str, task: str, now: dt.datetime, *, actor: str,
              message_id: int | None = None, **data: Any) -> None:
    """Open task `task` (e.g. `review_dispute`, `broken_promise`) on the case, in the
    caller's transaction. `data` must carry no addresses or names."""
    record_event(conn, EventKind.COLLECTOR_TASK, now, case_id=case_id, message_id=message_id, actor=actor,
                 task=task, **data)
