"""Automated voice calls (IVR) through the official Twilio SDK (async).

Twilio fetches the call's TwiML from `message.voice_url` when the call is answered;
answering-machine detection (`DetectMessageEnd`) makes Twilio wait for the beep and
report `AnsweredBy`, so our answer endpoint can leave a voicemail that names no debt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from dispatcher.channels.base import OutboundMessage, SendResult
from dispatcher.channels.reconcile import ProviderRecord
from dispatcher.channels.twilio_channel import TwilioChannel
from dispatcher.channels.twilio_client import CALL_STATUS, mask, response_probe, result_for_error
from dispatcher.domain import Channel, MessageStatus

log = logging.getLogger("dispatcher.channels.twilio_voice")

#: Twilio call statuses after which nothing changes any more.
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})


class TwilioVoiceChannel(TwilioChannel):
    """`calls.create` with our TwiML URL, progress callbacks and machine detection.

    Reconcile: Twilio's call records show neither our TwiML URL nor our status callback, so a
    call is ours when our webhooks named its SID (`?m=` on both URLs), or when it has
    our destination and caller number, was created after the attempt began (Twilio's
    clock) and no other call of ours to that number lacks a known SID: two cases
    sharing a phone never take each other's call. Otherwise "outcome unknown"
    (see `channels.reconcile`).
    """

    channel: ClassVar[Channel] = Channel.VOICE
    name: ClassVar[str] = "twilio-voice"
    status_callback_events: ClassVar[tuple[str, ...]] = ("initiated", "ringing", "answered", "completed")
    machine_detection: ClassVar[str] = "DetectMessageEnd"
    resource: ClassVar[str] = "calls"
    date_filter: ClassVar[str] = "start_time_after"
    compare_body: ClassVar[bool] = False
    statuses: ClassVar[Mapping[str, MessageStatus]] = CALL_STATUS
    final_statuses: ClassVar[frozenset[str]] = FINAL_CALL_STATUSES

    def _record(self, instance: Any) -> ProviderRecord:
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

    def _status_details(self, instance: Any) -> dict[str, str | None]:
        return {"answered_by": instance.answered_by, "duration": instance.duration}

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
