"""SMS through the official Twilio SDK (async), with delivery receipts to our webhook."""

from __future__ import annotations

import datetime as dt
import logging
from typing import ClassVar

from dispatcher.channels.base import OutboundMessage, SendResult
from dispatcher.channels.twilio_client import (
    MESSAGE_STATUS,
    created_at_or_after,
    make_client,
    mask,
    response_probe,
    result_for_error,
)
from dispatcher.domain import Channel, MessageStatus

log = logging.getLogger("dispatcher.channels.twilio_sms")


class TwilioSmsChannel:
    """`messages.create` with `StatusCallback`; reconcile by listing messages to the number.

    Provider facts: a body up to 1,600 characters; GSM-7 segments of 160/153
    characters, UCS-2 segments of 70/67 UTF-16 units.
    """

    channel: ClassVar[Channel] = Channel.SMS
    name: ClassVar[str] = "twilio-sms"
    max_body_chars: ClassVar[int] = 1600
    gsm7_segment_chars: ClassVar[tuple[int, int]] = (160, 153)
    ucs2_segment_units: ClassVar[tuple[int, int]] = (70, 67)
    #: Twilio's clock and ours may differ; a record this much older than `since` still counts.
    clock_skew: ClassVar[dt.timedelta] = dt.timedelta(minutes=2)
    #: At most this many of the number's newest messages are examined by `reconcile`.
    reconcile_scan_limit: ClassVar[int] = 500

    def __init__(self, account_sid: str, auth_token: str, api_url: str | None = None, timeout: float = 15.0) -> None:
        self._client, self._http = make_client(account_sid, auth_token, api_url, timeout)

    async def send(self, message: OutboundMessage) -> SendResult:
        """Create the message once. Never raises for provider or transport errors."""
        if not message.sender and not message.messaging_service_sid:
            return SendResult(
                None, MessageStatus.FAILED, error="no SMS sender: configure sms_from or messaging_service_sid"
            )
        kwargs: dict[str, str] = {"to": message.to, "body": message.body}
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
        """Look for a message to the same number with the exact body, created since `since`.

        Raises when Twilio cannot be asked (the outcome stays unknown); None only when
        Twilio's list, newest first, reaches `since` without a match.
        """
        floor = since.astimezone(dt.UTC).replace(microsecond=0) - self.clock_skew
        scanned = 0
        stream = await self._client.api.account.messages.stream_async(to=message.to, page_size=50)
        async for record in stream:
            if not created_at_or_after(record.date_created, floor):
                return None
            scanned += 1
            if scanned > self.reconcile_scan_limit:
                raise RuntimeError(f"reconcile: more than {self.reconcile_scan_limit} recent messages to the number")
            if record.body != message.body:
                continue
            if message.sender and not message.messaging_service_sid and record.from_ != message.sender:
                continue
            status = MESSAGE_STATUS.get(record.status or "", MessageStatus.SENT)
            error = None if record.error_code is None else f"Twilio {record.error_code}: {record.error_message or ''}"
            return SendResult(provider_id=record.sid, status=status, error=error)
        return None

    async def aclose(self) -> None:
        await self._http.close()
