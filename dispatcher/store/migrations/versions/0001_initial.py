"""Initial schema: cases, contact points, the outbox, events, holds, payments,
escalations and template approvals.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Money and datetime columns use the store's own types (`Money`, `UTCDateTime`), so the
migrated schema is exactly what `dispatcher.store.tables` declares on every backend.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dispatcher.store.tables import Money, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "cases",
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("jurisdiction", sa.String(16), nullable=False),
        sa.Column("locale", sa.String(8), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=True),
        sa.Column("zones", sa.String(512), nullable=False),
        sa.Column("escalated_stages", sa.String(256), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("principal", Money(), nullable=False),
        sa.Column("interest", Money(), nullable=False),
        sa.Column("penalty", Money(), nullable=False),
        sa.Column("fees", Money(), nullable=False),
        sa.Column("amount_due", Money(), nullable=False),
        sa.Column("penalty_rate_daily", Money(), nullable=True),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("product", sa.String(16), nullable=False),
        sa.Column("paid_total", Money(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("case_id"),
    )
    op.create_index("ix_cases_status", "cases", ["status"])

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.String(64), nullable=True),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_case", "events", ["case_id", "at"])
    op.create_index("ix_events_kind", "events", ["kind"])
    op.create_index("ix_events_message_id", "events", ["message_id"])

    op.create_table(
        "template_approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("template_path", sa.String(256), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("approved_by", sa.String(64), nullable=False),
        sa.Column("approved_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_template_approvals_template_path", "template_approvals", ["template_path"])

    op.create_table(
        "contact_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("address", sa.String(320), nullable=True),
        sa.Column("consent", sa.Boolean(), nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        sa.Column("invalid", sa.Boolean(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.case_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_id", "channel", name="uq_contact_case_channel"),
    )
    op.create_index("ix_contact_address", "contact_points", ["address"])

    op.create_table(
        "escalations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.case_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_id", "stage", name="uq_escalation_case_stage"),
    )

    op.create_table(
        "holds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("placed_at", UTCDateTime(), nullable=False),
        sa.Column("until", UTCDateTime(), nullable=True),
        sa.Column("placed_by", sa.String(64), nullable=True),
        sa.Column("released_at", UTCDateTime(), nullable=True),
        sa.Column("released_by", sa.String(64), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.case_id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_holds_case", "holds", ["case_id", "released_at"])

    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("stage", sa.String(32), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("template_id", sa.String(128), nullable=True),
        sa.Column("variant", sa.String(64), nullable=True),
        sa.Column("locale", sa.String(8), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("to_address", sa.String(320), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("parts", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider_id", sa.String(128), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("scheduled_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("status_at", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_at", UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("answered_by", sa.String(32), nullable=True),
        sa.Column("conversation", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.case_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index("ix_messages_case", "messages", ["case_id", "channel", "scheduled_at"])
    op.create_index("ix_messages_due", "messages", ["status", "scheduled_at"])
    op.create_index("ix_messages_provider", "messages", ["provider_id"])

    op.create_table(
        "payments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("recorded_by", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.case_id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_payments_case_id", "payments", ["case_id"])


def downgrade() -> None:
    # Children first: their foreign keys point at cases.
    for table in ("payments", "messages", "holds", "escalations", "contact_points",
                  "template_approvals", "events", "cases"):
        op.drop_table(table)
