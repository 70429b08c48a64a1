"""Short payment links: a random token per link, kept with its message, case and expiry.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

Links sent before this revision carry signed tokens; they keep working until they
expire (`services.links.resolve` reads both kinds), so nothing is backfilled.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dispatcher.store.tables import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "link_tokens",
        sa.Column("token", sa.String(16), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.ForeignKeyConstraint(["case_id"], ["cases.case_id"]),
        sa.PrimaryKeyConstraint("token"),
    )
    op.create_index("ix_link_tokens_message_id", "link_tokens", ["message_id"])
    op.create_index("ix_link_tokens_case_id", "link_tokens", ["case_id"])


def downgrade() -> None:
    op.drop_table("link_tokens")
