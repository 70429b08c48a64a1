"""Automated voice calls (IVR) through the official Twilio SDK (async).

Twilio fetches the call's TwiML from `message.voice_url` when the call is answered;
answering-machine detection (`DetectMessageEnd`) makes Twilio wait for the beep and
report `AnsweredBy`, so our answer endpoint can leave a voicemail that names no debt.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import ClassVar

from dispatcher.channels.base import OutboundMessage, SendResult
from dispatcher.channels.twilio_client import (
    CALL_STATUS,
    created_at_or_after,
    make_client,
    mask,
    response_probe,
    result_for_error,
)
from dispatcher.domain import Channel, MessageStatus

log = logging.getLogger("dispatcher.channels.twilio_voice")


class TwilioVoiceChannel:
    """`calls.create` with our TwiML URL, progress callbacks and machine detection."""

    channel: ClassVar[Channel] = Channel.VOICE
    name: ClassVar[str] = "twilio-voice"
    status_callback_events: ClassVar[tuple[str, ...]] = ("initiated", "ringing", "answered", "completed")
    machine_detection: ClassVar[str] = "DetectMessageEnd"
    clock_skew: ClassVar[dt.timedelta] = dt.timedelta(minutes=2)
    reconcile_scan_limit: ClassVar[int] = 200

    def __init__(self, account_sid: str, auth_token: str, api_url: str | None = None, timeout: float = 15.0) -> None:
        self._client, self._http = make_client(account_sid, auth_token, api_url, timeout)

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
        """Look for a call to the number from our caller number created since `since`.

        Twilio's call records do not show the TwiML URL, so a call is recognised by
        (To, From, time). One match is the call. Several (only possible if the caps
        were bypassed) are reported as the newest one: claiming "sent" when unsure never
        calls anyone twice. None only when Twilio's list reaches `since` without one.
        """
        floor = since.astimezone(dt.UTC).replace(microsecond=0) - self.clock_skew
        kwargs: dict[str, object] = {"to": message.to, "page_size": 50}
        if message.sender:
            kwargs["from_"] = message.sender
        matches = []
        stream = await self._client.api.account.calls.stream_async(**kwargs)
        async for record in stream:
            if not created_at_or_after(record.date_created, floor):
                break
            matches.append(record)
            if len(matches) > self.reconcile_scan_limit:
                raise RuntimeError(f"reconcile: more than {self.reconcile_scan_limit} recent calls to the number")
        if not matches:
            return None
        newest = max(matches, key=lambda r: r.date_created or dt.datetime.min.replace(tzinfo=dt.UTC))
        note = None if len(matches) == 1 else f"{len(matches)} calls to the number since the attempt; took the newest"
        return SendResult(
            provider_id=newest.sid, status=CALL_STATUS.get(newest.status or "", MessageStatus.SENT), error=note
        )

    async def aclose(self) -> None:
        await self._http.close()
