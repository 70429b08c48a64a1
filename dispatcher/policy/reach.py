"""When a reminder has reached the debtor, by its channel's status (pure): the one
definition that the escalation of an unanswered reminder (`services.tasks.
open_escalations`) and the reports' `delivered` counts share.

- SMS: a delivery receipt (`delivered`, `read`);
- voice: a completed call (a person or a voicemail);
- e-mail: never by its status. SMTP gives no delivery receipt: `sent` only says that a
  mail server took it, not that it reached an inbox, let alone a reader. An e-mail
  counts as engagement only when its link was clicked, and a click is the debtor's
  answer already (`link_clicked`).
"""

from __future__ import annotations

from dispatcher.domain import Channel, MessageStatus

DELIVERED_STATUSES: dict[Channel, frozenset[MessageStatus]] = {
    Channel.SMS: frozenset({MessageStatus.DELIVERED, MessageStatus.READ}),
    Channel.VOICE: frozenset({MessageStatus.COMPLETED}),
    Channel.EMAIL: frozenset(),
}


def delivered(channel: Channel, status: MessageStatus) -> bool:
    """Whether a message on `channel` with `status` reached the debtor (see above)."""
    return status in DELIVERED_STATUSES[channel]


__all__ = ["DELIVERED_STATUSES", "delivered"]
