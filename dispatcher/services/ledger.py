"""Our store's side of a reconcile's evidence (`channels.reconcile.Ledger`).

The status hot path learns a message's SID from the first callback that names it with
our `?m=` (the row's `provider_id`), even while the sender still has the row in flight;
the sender records the SIDs of the sends that answered. So the messages table says
which SIDs are ours, which belong to other messages, and which of our other messages
to the same number could own a provider record without our knowing its SID.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from dispatcher.channels.reconcile import Attempt, LedgerView
from dispatcher.domain import MessageStatus
from dispatcher.store.tables import messages_t

#: Statuses of rows that cannot own a provider record made since they got it: waiting in
#: the outbox (never handed over, or proven absent and re-queued) or never sent.
_NOT_AT_PROVIDER = (MessageStatus.QUEUED.value, MessageStatus.CANCELLED.value)


class StoreLedger:
    """`Ledger` over the messages table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def view(self, attempt: Attempt, since: dt.datetime, sids: Collection[str]) -> LedgerView:
        """See `channels.reconcile.Ledger.view` (the queries run in a worker thread)."""
        return await asyncio.to_thread(self._view, attempt, since, list(sids))

    def _view(self, attempt: Attempt, since: dt.datetime, sids: list[str]) -> LedgerView:
        m = messages_t.c
        channel = attempt.channel.value
        with self.engine.connect() as conn:
            own = conn.execute(select(m.provider_id).where(m.id == attempt.message_id)).scalar()
            owners: dict[str, int] = {}
            if sids:
                rows = conn.execute(select(m.provider_id, m.id).where(m.channel == channel, m.provider_id.in_(sids)))
                owners = {str(sid): int(mid) for sid, mid in rows}
            rivals = select(func.count()).select_from(messages_t).where(
                m.channel == channel,
                m.to_address == attempt.to,
                m.id != attempt.message_id,
                m.provider_id.is_(None),
                m.status.not_in(_NOT_AT_PROVIDER),
                m.status_at >= since,
            )
            if attempt.body is not None:
                rivals = rivals.where(m.body == attempt.body)
            count = int(conn.execute(rivals).scalar() or 0)
        return LedgerView(own_sid=own, owners=owners, rivals=count)
