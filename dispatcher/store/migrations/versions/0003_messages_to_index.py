"""An index for reconcile's rivals query: our other recent messages to one address.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09

`services.ledger` asks, for every ambiguous send, which of our other messages on the
same channel went to the same number since the attempt (`channel`, `to_address`,
`status_at >= since`); without an index that is a scan of the whole messages table per
reconcile.
"""

from __future__ import annotations

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_messages_to", "messages", ["channel", "to_address", "status_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_to", table_name="messages")
