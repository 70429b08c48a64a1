"""SMS through the official Twilio SDK (async), with delivery receipts to our webhook."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from dispatcher.channels.base import OutboundMessage, SendResult
from dispatcher.channels.reconcile import ProviderRecord
from dispatcher.channels.twilio_channel import TwilioChannel
from dispatcher.channels.twilio_client import MESSAGE_STATUS, mask, response_probe, result_for_error
from dispatcher.domain import Channel, MessageStatus

log = logging.getLogger("dispatcher.channels.twilio_sms")

#: Twilio message statuses after which nothing changes any more.
FINAL_MESSAGE_STATUSES = frozenset({"delivered", "undelivered", "failed", "read", "canceled"})


class TwilioSmsChannel(TwilioChannel):
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
    resource: ClassVar[str] = "messages"
    date_filter: ClassVar[str] = "date_sent_after"
    compare_body: ClassVar[bool] = True
    statuses: ClassVar[Mapping[str, MessageStatus]] = MESSAGE_STATUS
    final_statuses: ClassVar[frozenset[str]] = FINAL_MESSAGE_STATUSES

    def _record(self, instance: Any) -> ProviderRecord:
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

    def _status_details(self, instance: Any) -> dict[str, str | None]:
        return {"error_code": None if instance.error_code is None else str(instance.error_code)}

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
