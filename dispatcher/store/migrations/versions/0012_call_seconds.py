"""Calls keep their duration (what the provider bills by the minute; reports' cost).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04

The status callback that brings a call's duration (Twilio's `CallDuration`, on the
final status) stores it on the message, as `segments` is stored for an SMS, so that the
report's cost reads the messages alone instead of joining every call to its events
(7 of the report's 50 seconds of database CPU at 10,000,000 messages). Calls recorded
before this revision get it here from their `status_received` events, with the rule the
report used: the largest duration any of them recorded, digits only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("call_seconds", sa.Integer(), nullable=True))
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        seconds = ("CAST(SUBSTRING((CAST(e.data AS json) ->> 'duration') FROM '^[0-9]{1,9}$') AS INTEGER)")
        conn.execute(sa.text(
            "UPDATE messages m SET call_seconds = d.seconds FROM ("
            f" SELECT e.message_id, MAX({seconds}) AS seconds FROM events e"
            " WHERE e.kind = 'status_received' AND e.message_id IS NOT NULL GROUP BY e.message_id) d"
            " WHERE m.id = d.message_id AND m.channel = 'voice' AND d.seconds IS NOT NULL"))
    else:
        seconds = ("CASE WHEN json_valid(e.data) AND json_extract(e.data, '$.duration') GLOB '[0-9]*'"
                   " AND json_extract(e.data, '$.duration') NOT GLOB '*[^0-9]*'"
                   " AND length(json_extract(e.data, '$.duration')) <= 9"
                   " THEN CAST(json_extract(e.data, '$.duration') AS INTEGER) END")
        conn.execute(sa.text(
            "UPDATE messages SET call_seconds = (SELECT MAX(" + seconds + ") FROM events e"
            " WHERE e.kind = 'status_received' AND e.message_id = messages.id)"
            " WHERE channel = 'voice'"))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("call_seconds")
