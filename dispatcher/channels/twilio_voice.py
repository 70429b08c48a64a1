"""Automated voice calls (IVR) through the official Twilio SDK (async).

Twilio fetches the call's TwiML from `message.voice_url` when the call is answered;
answering-machine detection (`DetectMessageEnd`) makes Twilio wait for the beep and
report `AnsweredBy`, so our answer endpoint can leave a voicemail that names no debt.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, ClassVar

from twilio.base.exceptions import TwilioRestException

from dispatcher.channels.base import OutboundMessage, ProviderStatus, SendResult
from dispatcher.channels.reconcile import Ledger, NoLedger, Outcome, ProviderRecord
from dispatcher.channels.twilio_client import (
    CALL_STATUS,
    make_client,
    mask,
    response_probe,
    result_for_error,
)
from dispatcher.channels.twilio_reconcile import (
    attempt_for,
    gather_and_decide,
    log_verdict,
    record_result,
    unknown_result,
    walk,
)
from dispatcher.clock import Clock
from dispatcher.domain import Channel, MessageStatus

log = logging.getLogger("dispatcher.channels.twilio_voice")

#: Twilio call statuses after which nothing changes any more.
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})


def _record(instance: Any) -> ProviderRecord:
    return ProviderRecord(
        sid=instance.sid or "",
        to=instance.to or "",
        sender=instance._from,  # the SDK's CallInstance keeps From as `_from`
        service=None,
        body=None,
        created=instance.date_created,
        dated=instance.start_time is not None,
        status=instance.status,
    )


class TwilioVoiceChannel:
    """`calls.create` with our TwiML URL, progress callbacks and machine detection."""

    channel: ClassVar[Channel] = Channel.VOICE
    name: ClassVar[str] = "twilio-voice"
    status_callback_events: ClassVar[tuple[str, ...]] = ("initiated", "ringing", "answered", "completed")
    machine_detection: ClassVar[str] = "DetectMessageEnd"
    #: Each walk of `reconcile` reads at most this many calls to the number.
    reconcile_scan_limit: ClassVar[int] = 1000

    def __init__(self, account_sid: str, auth_token: str, api_url: str | None = None, timeout: float = 15.0, *,
                 clock: Clock | None = None, ledger: Ledger | None = None) -> None:
        self._client, self._http = make_client(account_sid, auth_token, api_url, timeout, clock)
        self._ledger: Ledger = ledger or NoLedger()

    async def send(self, message: OutboundMessage) -> SendResult:
        """Place the call once. Never raises for provider or transport errors."""
        if not message.sender:
            return SendResult(None, MessageStatus.FAILED, error="no caller number: configure voice_from")
        if not message.voice_url:
            return SendResult(None, MessageStatus.FAILED, error="no TwiML URL for the call (voice_url)")
        kwargs: dict[str, object] = {
            "to": message.to,
            "from_": message.sender,
            "url": message.voice_url,
            "machine_detection": self.machine_detection,
        }
        if message.status_callback:
            kwargs["status_callback"] = message.status_callback
            kwargs["status_callback_event"] = list(self.status_callback_events)
        with response_probe() as probe:
            try:
                created = await self._client.api.account.calls.create_async(**kwargs)
            except Exception as exc:  # noqa: BLE001 - mapped onto a typed result; nothing escapes
                result = result_for_error(exc, probe, "the call")
                log.warning("call %s to %s: %s", message.message_id, mask(message.to), result.error)
                return result
        log.info("call %s to %s accepted as %s", message.message_id, mask(message.to), created.sid)
        return SendResult(provider_id=created.sid, status=CALL_STATUS.get(created.status or "", MessageStatus.SENT))

    async def reconcile(self, message: OutboundMessage, since: dt.datetime) -> SendResult | None:
        """Whether the ambiguous call attempt stamped at `since` (our clock) reached Twilio.

        Twilio's call records show neither our TwiML URL nor our status callback, so a
        call is ours when our webhooks named its SID (`?m=` on both URLs), or when it has
        our destination and caller number, was created after the attempt began (Twilio's
        clock) and no other call of ours to that number lacks a known SID: two cases
        sharing a phone never take each other's call. Otherwise "outcome unknown"
        (see `channels.reconcile`). Raises when Twilio cannot be asked."""
        attempt = attempt_for(message, since, compare_body=False)
        calls = self._client.api.account.calls
        filters: dict[str, object] = {"to": message.to}
        if attempt.sender:
            filters["from_"] = attempt.sender
        verdict = await gather_and_decide(
            attempt,
            unfiltered=lambda: walk(calls.stream_async, self.reconcile_scan_limit, **filters),
            dated=lambda day: walk(calls.stream_async, self.reconcile_scan_limit, start_time_after=day, **filters),
            to_record=_record,
            skew=lambda: self._http.skew,
            ledger=self._ledger,
            limit=self.reconcile_scan_limit,
        )
        log_verdict(message, verdict)
        if verdict.outcome is Outcome.ABSENT:
            return None
        if verdict.outcome is Outcome.UNKNOWN:
            return unknown_result(verdict)
        assert verdict.sid is not None
        record = verdict.record or await self._fetch_record(verdict.sid)
        if record is None:  # our webhook named a SID the list does not show: it was placed
            return SendResult(provider_id=verdict.sid, status=MessageStatus.SENT, error="reconciled")
        return record_result(record, CALL_STATUS, None)

    async def _fetch(self, sid: str) -> Any | None:
        try:
            return await self._client.api.account.calls(sid).fetch_async()
        except TwilioRestException as exc:
            if exc.status == 404:
                return None
            raise

    async def _fetch_record(self, sid: str) -> ProviderRecord | None:
        found = await self._fetch(sid)
        return None if found is None else _record(found)

    async def fetch_status(self, provider_id: str) -> ProviderStatus | None:
        """The call's status at Twilio now (the status repair job); None if unknown to it."""
        found = await self._fetch(provider_id)
        if found is None or not found.status:
            return None
        return ProviderStatus(
            provider_id=provider_id,
            provider_status=found.status,
            status=CALL_STATUS.get(found.status, MessageStatus.SENT),
            final=found.status in FINAL_CALL_STATUSES,
            answered_by=found.answered_by,
            duration=found.duration,
        )

    async def probe(self) -> None:
        """Ask Twilio for one record of the calls list (the circuit breaker's probe): any
        answer, even a refusal, proves it reachable; raises `OSError` when it is not."""
        try:
            await self._client.api.account.calls.page_async(page_size=1)
        except TwilioRestException:
            return

    async def aclose(self) -> None:
        await self._http.close()
