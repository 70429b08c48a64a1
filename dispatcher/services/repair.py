"""The status repair job: the final status of SMS and calls whose callbacks were lost.

Twilio posts each status change once; a callback our web app could not take (the store
was down, the process restarting) or that never arrived is not retried, so the message
would stay "sent" or the call "ringing" forever, and the timeline, the reports and the
conversation rules with it. This job asks the provider instead: every SMS and call
whose status has not moved for `[receipts] repair_after_seconds` and is not final
(sent, ringing, in progress — "queued at the provider" is "sent" here) is fetched by its
SID, and what the provider says is applied through the receipts service exactly as its
callback would have been: statuses never move backwards, an invalid number or a
carrier opt-out is acted on, a completed call settles its conversation; the
`status_received` event says `"source": "repair"`.

Rows older than `repair_max_age_hours` are left alone (some carriers never report past
"sent"); at most `repair_batch` look-ups run per pass, oldest first, a few at a time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.channels.base import ChannelAdapter, ProviderStatus, StatusSource
from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.domain import Channel, MessageStatus
from dispatcher.services.receipts.status import StatusReceipts
from dispatcher.store.tables import messages_t

log = logging.getLogger("dispatcher.repair")

#: Statuses a status callback would still move on.
STUCK = (MessageStatus.SENT.value, MessageStatus.RINGING.value, MessageStatus.IN_PROGRESS.value)
#: Provider look-ups at once (the provider's API rate limits are per account).
CONCURRENCY = 4


@dataclass
class RepairSummary:
    """What one pass did."""

    examined: int = 0
    repaired: int = 0  # the status moved on
    unchanged: int = 0  # the provider has nothing newer
    unknown: int = 0  # the provider does not know the SID
    unreachable: int = 0  # the provider could not be asked (tried again next pass)


@dataclass(frozen=True, slots=True)
class _Stuck:
    id: int
    channel: Channel
    provider_id: str
    status: str


class StatusRepair:
    """Fetches the status of stuck SMS and calls from their channels and applies it."""

    def __init__(self, engine: Engine, config: Config, clock: Clock, channels: Mapping[Channel, ChannelAdapter]
                 ) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        #: the channels whose provider can be asked (the file transport and SMTP cannot)
        self.sources: dict[Channel, StatusSource] = {
            channel: adapter for channel, adapter in channels.items() if isinstance(adapter, StatusSource)}

    def stuck(self, now: dt.datetime) -> list[_Stuck]:
        """The rows to ask about, oldest first."""
        if not self.sources:
            return []
        settings = self.config.receipts
        m = messages_t.c
        query = (
            select(m.id, m.channel, m.provider_id, m.status)
            .where(m.channel.in_([c.value for c in self.sources]), m.status.in_(STUCK), m.provider_id.is_not(None),
                   m.status_at < now - dt.timedelta(seconds=settings.repair_after_seconds),
                   m.status_at >= now - dt.timedelta(hours=settings.repair_max_age_hours))
            .order_by(m.status_at, m.id)
            .limit(settings.repair_batch)
        )
        with self.engine.connect() as conn:
            return [_Stuck(r.id, Channel(r.channel), r.provider_id, r.status) for r in conn.execute(query)]

    async def run(self) -> RepairSummary:
        """One pass over the stuck rows."""
        summary = RepairSummary()
        rows = await asyncio.to_thread(self.stuck, self.clock.now())
        if not rows:
            return summary
        receipts = StatusReceipts(self.engine, self.clock)
        slots = asyncio.Semaphore(CONCURRENCY)
        try:
            await asyncio.gather(*(self._repair(row, receipts, slots, summary) for row in rows))
        finally:
            receipts.sql.close()
        log.info("repair: %d stuck, %d moved on, %d unchanged, %d unknown to the provider, %d not asked",
                 summary.examined, summary.repaired, summary.unchanged, summary.unknown, summary.unreachable)
        return summary

    async def _repair(self, row: _Stuck, receipts: StatusReceipts, slots: asyncio.Semaphore,
                      summary: RepairSummary) -> None:
        summary.examined += 1
        async with slots:
            try:
                found: ProviderStatus | None = await self.sources[row.channel].fetch_status(row.provider_id)
            except Exception as exc:  # noqa: BLE001 - the provider is down: the next pass asks again
                log.warning("repair: %s %s: cannot ask the provider (%s)", row.channel.value, row.id,
                            type(exc).__name__)
                summary.unreachable += 1
                return
        if found is None:
            summary.unknown += 1
            return
        outcome = await asyncio.to_thread(
            receipts.apply, row.channel, row.provider_id, found.provider_status, row.id,
            answered_by=found.answered_by, error_code=found.error_code, duration=found.duration, source="repair")
        if outcome.result == "applied":
            summary.repaired += 1
            log.info("repair: %s %s %s -> %s", row.channel.value, row.id, row.status, found.provider_status)
        else:
            summary.unchanged += 1
