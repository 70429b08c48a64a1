"""Tasks of closed cases are closed: the data that the rule "closing a case closes its
tasks" (`store.closing`) would have left, had it been in force.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04

Every open or claimed task of a case whose status is closed (`paid`, `settled`,
`closed`) is done by the system, at the moment the case closed (its first `case_closed`
event, else the case's last update, when a file closed it), with the note saying why
(`policy.lifecycle.task_closing_note`), and gets its `task_done` event on the case's
timeline. Nothing else changes; a downgrade leaves the tasks closed.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from dispatcher.domain import CLOSED_STATUSES, CaseStatus
from dispatcher.policy.lifecycle import IMPORTED, SYSTEM, task_closing_note
from dispatcher.store.events import encode_data

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    conn = op.get_bind()
    closed = sorted(s.value for s in CLOSED_STATUSES)
    rows = conn.execute(sa.text(
        "SELECT t.id, t.case_id, t.kind, c.status, c.updated_at FROM tasks t JOIN cases c ON c.case_id = t.case_id"
        " WHERE t.state IN ('open', 'claimed') AND c.status IN :closed ORDER BY t.id"
    ).bindparams(sa.bindparam("closed", expanding=True)), {"closed": closed}).all()
    closings: dict[str, tuple[object, str]] = {}
    for row in rows:
        if row.case_id in closings:
            continue
        event = conn.execute(sa.text(
            "SELECT at, data FROM events WHERE case_id = :case_id AND kind = 'case_closed' ORDER BY at, id LIMIT 1"
        ), {"case_id": row.case_id}).first()
        if event is None:
            closings[row.case_id] = (row.updated_at, IMPORTED)
        else:
            try:
                reason = str(json.loads(event.data).get("reason") or IMPORTED)
            except (ValueError, AttributeError):
                reason = IMPORTED
            closings[row.case_id] = (event.at, reason)
    for row in rows:
        at, reason = closings[row.case_id]
        note = task_closing_note(CaseStatus(row.status), reason)
        conn.execute(sa.text(
            "UPDATE tasks SET state = 'done', done_at = :at, done_by = :by, note = :note,"
            " assignee = COALESCE(assignee, :by) WHERE id = :id"
        ), {"at": at, "by": SYSTEM, "note": note, "id": row.id})
        conn.execute(sa.text(
            "INSERT INTO events (case_id, message_id, at, kind, actor, data)"
            " VALUES (:case_id, NULL, :at, 'task_done', :by, :data)"
        ), {"case_id": row.case_id, "at": at, "by": SYSTEM,
            "data": encode_data({"note": note, "task": row.kind, "task_id": row.id})})


def downgrade() -> None:
    """Nothing to undo: the tasks stay done (their cases are closed)."""
