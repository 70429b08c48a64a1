"""The collectors' workbench: tasks, the stored answers of idempotent API requests, and
the search indexes on PostgreSQL.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Search (`services.search`) on PostgreSQL uses indexes the tables do not declare (they
are PostgreSQL-only expressions; SQLite searches without them): a case id prefix through
`lower(case_id) COLLATE "C"`, the last 4 digits of a phone through
`right(address, 4)` on SMS contact points, an e-mail local part through `address
text_pattern_ops` on e-mail contact points, and a name substring through a trigram GIN
index (`pg_trgm`). When the extension cannot be created (a managed server that does not
allow it, a role without the right), the name index is left out and a name search scans
the table: slower, still correct. All are named `ix_search_*`.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from dispatcher.store.tables import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

log = logging.getLogger("dispatcher.store")

#: The PostgreSQL search indexes (see the module docstring), by name.
SEARCH_INDEXES = {
    # "C": byte order, so one index scan answers both the prefix (LIKE) and the order
    "ix_search_cases_id": 'CREATE INDEX ix_search_cases_id ON cases ((lower(case_id) COLLATE "C"))',
    "ix_search_contacts_last4": (
        "CREATE INDEX ix_search_contacts_last4 ON contact_points (right(address, 4)) WHERE channel = 'sms'"
    ),
    "ix_search_contacts_email": (
        "CREATE INDEX ix_search_contacts_email ON contact_points (address text_pattern_ops)"
        " WHERE channel = 'email'"
    ),
}
TRIGRAM_INDEX = "CREATE INDEX ix_search_cases_name ON cases USING gin (name gin_trgm_ops)"


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("assignee", sa.String(64), nullable=True),
        sa.Column("claimed_at", UTCDateTime(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("done_at", UTCDateTime(), nullable=True),
        sa.Column("done_by", sa.String(64), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.case_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_id", "kind", "source", name="uq_task_case_kind_source"),
    )
    op.create_index("ix_tasks_case_id", "tasks", ["case_id"])
    op.create_index("ix_tasks_queue", "tasks", ["state", "due_at"])
    op.create_table(
        "idempotency_keys",
        sa.Column("principal", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("principal", "key"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    for ddl in SEARCH_INDEXES.values():
        conn.exec_driver_sql(ddl)
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        conn.exec_driver_sql(TRIGRAM_INDEX)
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        log.warning("pg_trgm is not available (%s): name search will scan the cases table",
                    str(exc.orig).splitlines()[0] if exc.orig else exc)
    else:
        savepoint.commit()


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for name in (*SEARCH_INDEXES, "ix_search_cases_name"):
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_tasks_queue", table_name="tasks")
    op.drop_index("ix_tasks_case_id", table_name="tasks")
    op.drop_table("tasks")
