"""When a case closes, and what its closing means for the collectors' tasks. Pure.

A case closes when its status moves from `active` to one of `CLOSED_STATUSES` (paid in
full, settled, or closed by the lender's file). Every path that does so (a payment, a
kept plan's waiver, an import) goes through `store.closing.case_closed`, which closes
the case's open and claimed tasks with the note `task_closing_note` gives: a collector
working the queue never meets a task whose case needs nothing more, and the case's
timeline says which task was closed, when, and why. A task opened for a case that is
closed already is closed at once, with the same kind of note.
"""

from __future__ import annotations

from decimal import Decimal

from dispatcher.domain import CLOSED_STATUSES, CaseStatus

#: Why a case closed (the `reason` of its `case_closed` event).
PAID_IN_FULL = "paid_in_full"  # the payments cover the amount due
PLAN_KEPT_PENALTY_WAIVED = "plan_kept_penalty_waived"  # a kept plan's waiver covers the rest
IMPORTED = "imported"  # the lender's file gave the case a closed status

_WHY = {
    PAID_IN_FULL: "paid in full",
    PLAN_KEPT_PENALTY_WAIVED: "repayment plan kept, the rest waived",
}

#: Who closes tasks on a case's closing (`done_by`, the `task_done` event's actor).
SYSTEM = "system"


def closes(before: CaseStatus | None, after: CaseStatus) -> bool:
    """True when a case that was open (`before`, None for a new case) is closed by
    moving to `after`. A case imported closed was never open: nothing closes."""
    return before is not None and before not in CLOSED_STATUSES and after in CLOSED_STATUSES


def imported_status(file_status: CaseStatus, paid_total: Decimal | None, amount_due: Decimal) -> CaseStatus:
    """The status a (re-)imported case gets: the file's, except that an active case whose
    recorded payments cover the imported amount due is `paid` (it stays closed, or
    closes, when the lender's file lowers the amount)."""
    if file_status is CaseStatus.ACTIVE and paid_total is not None and paid_total > 0 and paid_total >= amount_due:
        return CaseStatus.PAID
    return file_status


def import_reason(file_status: CaseStatus, status: CaseStatus) -> str:
    """Why an import closed a case (see `imported_status`)."""
    return PAID_IN_FULL if file_status is CaseStatus.ACTIVE and status is CaseStatus.PAID else IMPORTED


def task_closing_note(status: CaseStatus, reason: str | None) -> str:
    """The note on a task the system closes because its case closed: "case closed: paid
    in full". `reason` None: the case was closed already when the task was opened."""
    if reason is None:
        return f"case closed ({status.value}) before this task was opened: nothing to do"
    why = _WHY.get(reason) or (f"marked {status.value} by an import" if reason == IMPORTED
                               else f"{status.value} ({reason})")
    return f"case closed: {why}"


__all__ = ["IMPORTED", "PAID_IN_FULL", "PLAN_KEPT_PENALTY_WAIVED", "SYSTEM", "closes", "import_reason",
           "imported_status", "task_closing_note"]
