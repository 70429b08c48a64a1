"""Messages keep their SMS segment count (what the provider bills; reports' cost).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

The sender sets `segments` when it renders an SMS (and the automatic replies when they
are queued). Rows sent before this revision are counted here from their stored body,
with the same counter (`templates.segments.sms_segments`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from dispatcher.templates.segments import sms_segments

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_BATCH = 1000


def upgrade() -> None:
    op.add_column("messages", sa.Column("segments", sa.Integer(), nullable=True))
    conn = op.get_bind()
    messages = sa.table("messages", sa.column("id", sa.Integer()), sa.column("channel", sa.String()),
                        sa.column("body", sa.Text()), sa.column("segments", sa.Integer()))
    update = sa.update(messages).where(messages.c.id == sa.bindparam("b_id")).values(segments=sa.bindparam("b_n"))
    last = 0
    while True:  # keyset batches: memory stays flat however many messages there are
        rows: Any = conn.execute(
            sa.select(messages.c.id, messages.c.body)
            .where(messages.c.channel == "sms", messages.c.body.is_not(None), messages.c.id > last)
            .order_by(messages.c.id).limit(_BATCH)
        ).all()
        if not rows:
            break
        conn.execute(update, [{"b_id": r.id, "b_n": sms_segments(r.body).segments} for r in rows])
        last = rows[-1].id


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("segments")
