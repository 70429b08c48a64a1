"""Dedupe keys of webhook steps: one row per step that must take effect once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08

Until this revision a duplicate inbound SMS or IVR step was recognised by matching the
text of earlier events (and a promise by its hold's note). The keys are backfilled from
those rows, so a webhook that was applied before the upgrade and is delivered again
after it is still a duplicate:

- `sms-in:<MessageSid>` from `reply_received` / `keyword_received` events;
- `ivr-identity:<message id>` from `keypress` events with `identity_confirmed`;
- `ivr-promise:<message id>` from `promise_to_pay` holds placed by the IVR (note
  `ivr call message <id>`).

The event data is parsed as JSON here, once; run time never reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

from dispatcher.store.dedupe import INBOUND_SMS, IVR_IDENTITY, IVR_PROMISE, dedupe_key
from dispatcher.store.tables import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_BATCH = 1000
_PROMISE_NOTE = "ivr call message "


def upgrade() -> None:
    keys = op.create_table(
        "dedupe_keys",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    conn = op.get_bind()
    seen: set[str] = set()
    batch: list[dict[str, Any]] = []
    for key, at in _existing_keys(conn):
        if key in seen:  # old duplicates map to one key: the first occurrence's
            continue
        seen.add(key)
        batch.append({"key": key, "at": at})
        if len(batch) >= _BATCH:
            conn.execute(sa.insert(keys), batch)
            batch = []
    if batch:
        conn.execute(sa.insert(keys), batch)


def downgrade() -> None:
    op.drop_table("dedupe_keys")


def _existing_keys(conn: sa.Connection) -> Iterator[tuple[str, Any]]:
    events = sa.table("events", sa.column("id", sa.Integer()), sa.column("message_id", sa.Integer()),
                      sa.column("at", UTCDateTime()), sa.column("kind", sa.String()), sa.column("data", sa.Text()))
    holds = sa.table("holds", sa.column("id", sa.Integer()), sa.column("reason", sa.String()),
                     sa.column("note", sa.Text()), sa.column("placed_at", UTCDateTime()))
    rows: Iterable[Any] = conn.execute(
        sa.select(events.c.kind, events.c.message_id, events.c.at, events.c.data)
        .where(events.c.kind.in_(["reply_received", "keyword_received", "keypress"]))
        .order_by(events.c.id)
        .execution_options(yield_per=_BATCH)
    )
    for row in rows:
        data = _json(row.data)
        if row.kind == "keypress":
            if data.get("identity_confirmed") is True and row.message_id is not None:
                yield dedupe_key(IVR_IDENTITY, row.message_id), row.at
        elif isinstance(data.get("sid"), str):
            yield dedupe_key(INBOUND_SMS, data["sid"]), row.at
    promises = conn.execute(
        sa.select(holds.c.note, holds.c.placed_at)
        .where(holds.c.reason == "promise_to_pay", holds.c.note.is_not(None))
        .order_by(holds.c.id)
        .execution_options(yield_per=_BATCH)
    )
    for note, placed_at in promises:
        ident = note[len(_PROMISE_NOTE):] if note.startswith(_PROMISE_NOTE) else ""
        if ident.isdigit():
            yield dedupe_key(IVR_PROMISE, int(ident)), placed_at


def _json(text: str | None) -> dict[str, Any]:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
