"""Work for a person, opened from the debtor's page and the plan check (a dispute to
review, a broken plan to follow up): one function, over the collectors' task queue
(`services.tasks.open_task`, which also records the `collector_task` event)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.engine import Connection

from dispatcher.config import Config
from dispatcher.services import tasks


def open_task(conn: Connection, config: Config | None, case_id: str, task: str, now: dt.datetime, *, actor: str,
              source: str, detail: str = "", **data: Any) -> None:
    """Open task `task` (`review_dispute`, `broken_promise`) on the case, once per
    `source`, in the caller's transaction. `data` must carry no addresses or names."""
    tasks.open_task(conn, config, case_id, task, now, source=source, detail=detail, actor=actor, **data)
