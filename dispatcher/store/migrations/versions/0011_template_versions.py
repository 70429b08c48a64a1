"""Template versions in the database, four-eyes approval (SPEC 15); messages pin theirs.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

`template_versions` holds every saved text; at most one version per (template id,
locale) is `approved` (a partial unique index, on SQLite and PostgreSQL alike).
`messages.template_version` is the version a message was rendered from. The shipped
templates are imported on first use (`services.template_versions`), not here: the
migration does not know where the configuration's templates folder is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dispatcher.store.tables import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

_ONE_APPROVED = sa.text("state = 'approved'")


def upgrade() -> None:
    op.create_table(
        "template_versions",
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("template_id", sa.String(128), nullable=False),
        sa.Column("locale", sa.String(8), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("approved_by", sa.String(64), nullable=True),
        sa.Column("approved_at", UTCDateTime(), nullable=True),
        sa.Column("rejected_by", sa.String(64), nullable=True),
        sa.Column("rejected_at", UTCDateTime(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_index("ix_template_versions_template", "template_versions", ["template_id", "locale", "version"])
    op.create_index("uq_template_versions_approved", "template_versions", ["template_id", "locale"], unique=True,
                    sqlite_where=_ONE_APPROVED, postgresql_where=_ONE_APPROVED)
    op.add_column("messages", sa.Column("template_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("template_version")
    op.drop_index("uq_template_versions_approved", table_name="template_versions")
    op.drop_index("ix_template_versions_template", table_name="template_versions")
    op.drop_table("template_versions")
