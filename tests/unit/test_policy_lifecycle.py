"""The pure rules of a case's closing (`policy.lifecycle`) and of a reminder having
reached the debtor (`policy.reach`)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from dispatcher.domain import CLOSED_STATUSES, CaseStatus, Channel, MessageStatus
from dispatcher.policy import lifecycle
from dispatcher.policy.reach import DELIVERED_STATUSES, delivered
from dispatcher.reports import queries

ACTIVE, PAID, SETTLED, CLOSED = CaseStatus.ACTIVE, CaseStatus.PAID, CaseStatus.SETTLED, CaseStatus.CLOSED


@pytest.mark.parametrize("after", sorted(CLOSED_STATUSES))
def test_an_open_case_closes_when_it_moves_to_a_closed_status(after: CaseStatus) -> None:
    assert lifecycle.closes(ACTIVE, after)
    assert not lifecycle.closes(None, after)  # imported closed: it never was open
    assert not any(lifecycle.closes(before, after) for before in CLOSED_STATUSES)  # closed already
    assert not lifecycle.closes(after, ACTIVE)  # reopened: nothing closes


def test_imported_status() -> None:
    due = Decimal("100.00")
    assert lifecycle.imported_status(ACTIVE, None, due) is ACTIVE  # a new case
    assert lifecycle.imported_status(ACTIVE, Decimal("0.00"), due) is ACTIVE
    assert lifecycle.imported_status(ACTIVE, Decimal("99.99"), due) is ACTIVE
    assert lifecycle.imported_status(ACTIVE, Decimal("100.00"), due) is PAID  # the payments cover it
    assert lifecycle.imported_status(CLOSED, Decimal("100.00"), due) is CLOSED  # the file's closed status wins
    assert lifecycle.imported_status(SETTLED, None, due) is SETTLED
    assert lifecycle.import_reason(ACTIVE, PAID) == lifecycle.PAID_IN_FULL
    assert lifecycle.import_reason(PAID, PAID) == lifecycle.IMPORTED
    assert lifecycle.import_reason(CLOSED, CLOSED) == lifecycle.IMPORTED


def test_the_note_on_a_task_closed_with_its_case_says_why() -> None:
    note = lifecycle.task_closing_note
    assert note(PAID, lifecycle.PAID_IN_FULL) == "case closed: paid in full"
    assert note(SETTLED, lifecycle.PLAN_KEPT_PENALTY_WAIVED) == "case closed: repayment plan kept, the rest waived"
    assert note(CLOSED, lifecycle.IMPORTED) == "case closed: marked closed by an import"
    assert note(SETTLED, "written_off") == "case closed: settled (written_off)"
    assert note(PAID, None) == "case closed (paid) before this task was opened: nothing to do"


def test_an_email_is_never_delivered_by_its_status() -> None:
    assert not any(delivered(Channel.EMAIL, status) for status in MessageStatus)  # SMTP has no receipts
    assert {s for s in MessageStatus if delivered(Channel.SMS, s)} == {MessageStatus.DELIVERED, MessageStatus.READ}
    assert {s for s in MessageStatus if delivered(Channel.VOICE, s)} == {MessageStatus.COMPLETED}
    assert not delivered(Channel.SMS, MessageStatus.SENT)


def test_the_reports_count_delivered_messages_by_the_same_rule() -> None:
    """The reports' SQL says the same as `policy.reach`: SMS with a receipt, completed calls."""
    order = list(MessageStatus).index
    sms = ", ".join(f"'{s.value}'" for s in sorted(DELIVERED_STATUSES[Channel.SMS], key=order))
    expected_sms = f"m.channel = 'sms' AND m.status IN ({sms})"
    expected_voice = f"m.channel = 'voice' AND m.status = '{MessageStatus.COMPLETED.value}'"
    assert (expected_sms, expected_voice) == (queries.SMS_DELIVERED, queries.CALL_COMPLETED)
    assert DELIVERED_STATUSES[Channel.VOICE] == {MessageStatus.COMPLETED}
    assert "email" not in queries.SMS_DELIVERED + queries.CALL_COMPLETED
