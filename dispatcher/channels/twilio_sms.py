"""SMS through the official Twilio SDK (async), with delivery receipts to our webhook."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, ClassVar

from twilio.base.exceptions import TwilioRestException

from dispatcher.channels.base import OutboundMessage, ProviderStatus, SendResult
from dispatcher.channels.reconcile import Ledger, NoLedger, Outcome, ProviderRecord
from dispatcher.channels.twilio_client import (
    MESSAGE_STATUS,
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

log = logging.getLogger("dispatcher.channels.twilio_sms")

#: Twilio message statuses after which nothing changes any more.
FINAL_MESSAGE_STATUSES = frozenset({"delivered", "undelivered", "failed", "read", "canceled"})


def _record(instance: Any) -> ProviderRecord:
    return ProviderRecord(
        sid=instance.sid or "",
        to=instance.to or "",
        sender=instance.from_,
        service=instance.messaging_service_sid,
        body=instance.body,
        created=instance.date_created,
        dated=instance.date_sent is not None,
        status=instance.status,
        error_code=instance.error_code,
        error_message=instance.error_message,
    )


class TwilioSmsChannel:
    """`messages.create` with `StatusCallback`; reconcile by listing messages to the number.

    Provider facts: a body up to 1,600 characters; GSM-7 segments of 160/153
    characters, UCS-2 segments of 70/67 UTF-16 units. Smart Encoding and link shortening
    are turned off on every message (`SmartEncoded=false`, `ShortenUrls=false`): Twilio
    then stores the body we sent, which reconcile compares exactly, and our own payment
    links are short already.
    """

    channel: ClassVar[Channel] = Channel.SMS
    name: ClassVar[str] = "twilio-sms"
    max_body_chars: ClassVar[int] = 1600
    gsm7_segment_chars: ClassVar[tuple[int, int]] = (160, 153)
    ucs2_segment_units: ClassVar[tuple[int, int]] = (70, 67)
    #: Each walk of `reconcile` reads at most this many records to the number; a longer
    #: list leaves the evidence incomplete ("absent" is then never concluded).
    reconcile_scan_limit: ClassVar[int] = 1000

    def __init__(self, account_sid: str, auth_token: str, api_url: str | None = None, timeout: float = 15.0, *,
                 clock: Clock | None = None, ledger: Ledger | None = None) -> None:
        self._client, self._http = make_client(account_sid, auth_token, api_url, timeout, clock)
        self._ledger: Ledger = ledger or NoLedger()

    async def send(self, message: OutboundMessage) -> SendResult:
        """Create the message once. Never raises for provider or transport errors."""
        if not message.sender and not message.messaging_service_sid:
            return SendResult(
                None, MessageStatus.FAILED, error="no SMS sender: configure sms_from or messaging_service_sid"
            )
        kwargs: dict[str, object] = {"to": message.to, "body": message.body, "smart_encoded": False,
                                     "shorten_urls": False}
        if message.messaging_service_sid:
            kwargs["messaging_service_sid"] = message.messaging_service_sid
        if message.sender:
            kwargs["from_"] = message.sender
        if message.status_callback:
            kwargs["status_callback"] = message.status_callback
        with response_probe() as probe:
            try:
                created = await self._client.api.account.messages.create_async(**kwargs)
            except Exception as exc:  # noqa: BLE001 - mapped onto a typed result; nothing escapes
                result = result_for_error(exc, probe, "the message")
                log.warning("sms %s to %s: %s", message.message_id, mask(message.to), result.error)
                return result
        status = MESSAGE_STATUS.get(created.status or "", MessageStatus.SENT)
        error = None if created.error_code is None else f"Twilio {created.error_code}: {created.error_message or ''}"
        log.info("sms %s to %s accepted as %s", message.message_id, mask(message.to), created.sid)
        return SendResult(provider_id=created.sid, status=status, error=error)

    async def reconcile(self, message: OutboundMessage, since: dt.datetime) -> SendResult | None:
        """Whether the ambiguous attempt stamped at `since` (our clock) reached Twilio:
        found (its record), None (Twilio has no record that could be it), or failed with
        "outcome unknown: ..." when the evidence cannot tell (see `channels.reconcile`).
        Raises when Twilio cannot be asked."""
        attempt = attempt_for(message, since, compare_body=True)
        messages = self._client.api.account.messages
        filters: dict[str, object] = {"to": message.to}
        if attempt.sender:
            filters["from_"] = attempt.sender
        verdict = await gather_and_decide(
            attempt,
            unfiltered=lambda: walk(messages.stream_async, self.reconcile_scan_limit, **filters),
            dated=lambda day: walk(messages.stream_async, self.reconcile_scan_limit, date_sent_after=day, **filters),
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
        if record is None:  # our webhook named a SID the list does not show: it was sent
            return SendResult(provider_id=verdict.sid, status=MessageStatus.SENT, error="reconciled")
        return record_result(record, MESSAGE_STATUS, None)

    async def _fetch_record(self, sid: str) -> ProviderRecord | None:
        try:
            return _record(await self._client.api.account.messages(sid).fetch_async())
        except TwilioRestException as exc:
            if exc.status == 404:
                return None
            raise

    async def fetch_status(self, provider_id: str) -> ProviderStatus | None:
        """The message's status at Twilio now (the status repair job); None if unknown to it."""
        record = await self._fetch_record(provider_id)
        if record is None or not record.status:
            return None
        return ProviderStatus(
            provider_id=provider_id,
            provider_status=record.status,
            status=MESSAGE_STATUS.get(record.status, MessageStatus.SENT),
            final=record.status in FINAL_MESSAGE_STATUSES,
            error_code=None if record.error_code is None else str(record.error_code),
        )

    async def probe(self) -> None:
        """Ask Twilio for one record of the messages list (the circuit breaker's probe): any
        answer, even a refusal, proves it reachable; raises `OSError` when it is not."""
        try:
            await self._client.api.account.messages.page_async(page_size=1)
        except TwilioRestException:
            return

    async def aclose(self) -> None:
        await self._http.close()
