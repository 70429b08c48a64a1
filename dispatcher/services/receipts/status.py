"""Status callbacks of SMS and calls: what a receipt changes besides the status itself.

The status moves through `hot_path.StatusSQL` (up the rank order only; a duplicate or a
late lower status changes nothing). What follows, off the hot path and only when it
applies: a callback for an unknown message is kept as an orphan event; a completed call
may settle a conversation (see `ivr.settle_conversation`); a failed SMS whose error the
channel maps to an `AddressOutcome` marks the number invalid or opted out at the
carrier on every case with it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from dispatcher.channels.twilio_client import address_outcome
from dispatcher.clock import Clock
from dispatcher.domain import AddressOutcome, Channel, MessageStatus
from dispatcher.policy.replies import UnknownStatusError, map_provider_status
from dispatcher.services.receipts.hot_path import Match, StatusSQL
from dispatcher.services.receipts.ivr import settle_conversation
from dispatcher.store import repository
from dispatcher.store.events import EventKind, encode_data, record_event

log = logging.getLogger("dispatcher.receipts")

_FAILED = (MessageStatus.FAILED, MessageStatus.UNDELIVERED)


@dataclass(frozen=True, slots=True)
class StatusOutcome:
    """What one status callback did: `applied` (the status moved up), `stale` (a
    duplicate or a late lower status: nothing changed), `orphan` (no such message; kept
    as an orphan event) or `ignored` (a status value that says nothing about delivery)."""

    result: str
    message_id: int | None = None
    case_id: str | None = None
    status: MessageStatus | None = None


def call_seconds(duration: str | None) -> int | None:
    """A call's duration as the provider reported it (`CallDuration`, whole seconds), or
    None when it is missing or not plain digits (at most 9: nothing a call lasts)."""
    if duration is None or not (0 < len(duration) <= 9) or not duration.isascii() or not duration.isdigit():
        return None
    return int(duration)


@dataclass(frozen=True, slots=True)
class _Callback:
    """One parsed status callback."""

    channel: Channel
    sid: str
    status: MessageStatus
    message_id: int | None
    now: dt.datetime
    answered_by: str | None
    data: dict[str, Any]
    address: AddressOutcome
    call_seconds: int | None = None


class StatusReceipts:
    """Applies status callbacks. Thread-safe; the async entry point runs on the loop."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self.sql = StatusSQL(engine)

    def _parse(self, channel: Channel, sid: str, provider_status: str, message_id: int | None,
               answered_by: str | None, error_code: str | None, duration: str | None,
               source: str | None = None) -> _Callback | StatusOutcome:
        try:
            status = map_provider_status(provider_status)
        except UnknownStatusError:
            log.warning("status callback %s: unknown status %r ignored", sid[:40], provider_status[:40])
            return StatusOutcome("ignored")
        if status is None:
            return StatusOutcome("ignored")
        data: dict[str, Any] = {"status": status.value, "provider_status": provider_status[:40], "sid": sid}
        if error_code:
            data["error_code"] = error_code[:16]
        if answered_by:
            data["answered_by"] = answered_by[:32]
        if duration:
            data["duration"] = duration[:16]
        if source:  # not a callback: e.g. "repair" (the status was fetched from the provider)
            data["source"] = source[:16]
        address = address_outcome(error_code) if channel is Channel.SMS and status in _FAILED else AddressOutcome.NONE
        seconds = call_seconds(duration) if channel is Channel.VOICE else None
        return _Callback(channel, sid, status, message_id, self.clock.now(), answered_by, data, address, seconds)

    @staticmethod
    def _needs_follow_up(cb: _Callback, match: Match | None) -> bool:
        if match is None:
            return True  # orphan event
        if cb.channel is Channel.VOICE and cb.status is MessageStatus.COMPLETED:
            return True
        return match.applied and cb.address is not AddressOutcome.NONE

    def _follow_up(self, cb: _Callback, match: Match | None) -> StatusOutcome:
        if match is None:
            with self.engine.begin() as conn:
                record_event(conn, EventKind.ORPHAN_CALLBACK, cb.now, channel=cb.channel.value, m=cb.message_id,
                             **cb.data)
            log.info("status callback for unknown %s %s (m=%s) kept as orphan", cb.channel.value, cb.sid[:40],
                     cb.message_id)
            return StatusOutcome("orphan", status=cb.status)
        if cb.channel is Channel.VOICE and cb.status is MessageStatus.COMPLETED:
            settle_conversation(self.engine, match.message_id)
        if match.applied and match.to_address and cb.address is not AddressOutcome.NONE:
            self._apply_address_outcome(cb, match.to_address)
        return self._outcome(match, cb.status)

    def _apply_address_outcome(self, cb: _Callback, to_address: str) -> None:
        with self.engine.begin() as conn:
            if cb.address is AddressOutcome.INVALID:
                repository.mark_address_invalid(conn, cb.channel, to_address, cb.now)
            elif cb.address is AddressOutcome.CARRIER_OPT_OUT:
                source = f"carrier:{str(cb.data.get('error_code', '')).strip()}"
                repository.set_opt_out(conn, cb.channel, to_address, True, cb.now, source=source)

    @staticmethod
    def _outcome(match: Match, status: MessageStatus) -> StatusOutcome:
        if match.applied:
            return StatusOutcome("applied", match.message_id, match.case_id, status)
        current = MessageStatus(match.status) if match.status else None
        return StatusOutcome("stale", match.message_id, match.case_id, current)

    def apply(self, channel: Channel, sid: str, provider_status: str, message_id: int | None = None, *,
              answered_by: str | None = None, error_code: str | None = None,
              duration: str | None = None, source: str | None = None) -> StatusOutcome:
        """Apply one SMS or call status callback (or a status fetched from the provider,
        `source="repair"`, recorded in its event). Blocking."""
        cb = self._parse(channel, sid, provider_status, message_id, answered_by, error_code, duration, source)
        if isinstance(cb, StatusOutcome):
            return cb
        match = self.sql.apply(channel, sid, cb.status, message_id, cb.now, answered_by, encode_data(cb.data),
                               cb.call_seconds)
        return self._follow_up(cb, match)

    async def apply_async(self, channel: Channel, sid: str, provider_status: str, message_id: int | None = None,
                          *, answered_by: str | None = None, error_code: str | None = None,
                          duration: str | None = None) -> StatusOutcome:
        """`apply` for the event loop: the common case (a status moves, or a duplicate)
        costs one statement and no worker thread on PostgreSQL."""
        cb = self._parse(channel, sid, provider_status, message_id, answered_by, error_code, duration)
        if isinstance(cb, StatusOutcome):
            return cb
        match = await self.sql.apply_async(channel, sid, cb.status, message_id, cb.now, answered_by,
                                           encode_data(cb.data), cb.call_seconds)
        if self._needs_follow_up(cb, match):
            return await asyncio.to_thread(self._follow_up, cb, match)
        assert match is not None
        return self._outcome(match, cb.status)
