"""`RecordingChannel`: an in-memory ChannelAdapter for tests (re-exported by `dispatcher.testing`).

It records every `OutboundMessage` it is given and answers with configurable results,
so tests assert on what was sent rather than on mock call order:

    sms = RecordingChannel(Channel.SMS)
    sms.queue_results(SendResult(None, MessageStatus.FAILED, retryable=True, ambiguous=True))
    ... run the outbox ...
    assert [m.to for m in sms.sent] == ["+8613800138000"]
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from dispatcher.channels.base import OutboundMessage, SendResult
from dispatcher.domain import Channel, MessageStatus

Responder = Callable[[OutboundMessage], SendResult]


class RecordingChannel:
    """`RecordingChannel(channel, respond=None)`; an instance is of a per-channel subclass.

    - `sent`: every message passed to `send`, in order (attempts, not distinct messages)
    - `queue_results(*results)`: answers for the next sends, in order; then `respond`
    - `respond(message) -> SendResult`: the default answer (SENT, provider id `rec-<n>`)
    - `reconcile`: the provider's view: messages whose send returned a provider id or an
      ambiguous result that "reached" the provider (`reach_on_ambiguous`, default True),
      or what `reconcile_results[message_id]` says
    """

    channel: ClassVar[Channel] = Channel.SMS
    name: ClassVar[str] = "recording"

    def __new__(cls, channel: Channel | str = Channel.SMS, respond: Responder | None = None) -> RecordingChannel:
        target = cls if cls is not RecordingChannel else _RECORDING_CHANNELS[Channel(channel)]
        return super().__new__(target)

    def __init__(self, channel: Channel | str = Channel.SMS, respond: Responder | None = None) -> None:
        if Channel(channel) is not type(self).channel:
            raise ValueError(f"{type(self).__name__} is for {type(self).channel.value}, not {channel}")
        self.sent: list[OutboundMessage] = []
        self.reconciled: list[OutboundMessage] = []
        self.respond: Responder = respond or self._accept
        self.reach_on_ambiguous = True
        self.reconcile_results: dict[int, SendResult | None] = {}
        self.closed = False
        self._queued: deque[SendResult] = deque()
        self._provider: dict[int, SendResult] = {}

    def queue_results(self, *results: SendResult) -> None:
        self._queued.extend(results)

    def _accept(self, message: OutboundMessage) -> SendResult:
        return SendResult(provider_id=f"rec-{len(self.sent)}", status=MessageStatus.SENT)

    async def send(self, message: OutboundMessage) -> SendResult:
        self.sent.append(message)
        result = self._queued.popleft() if self._queued else self.respond(message)
        if result.provider_id and result.status is not MessageStatus.FAILED:
            self._provider[message.message_id] = result
        elif result.ambiguous and self.reach_on_ambiguous:
            self._provider[message.message_id] = SendResult(
                provider_id=f"rec-{len(self.sent)}-ambiguous", status=MessageStatus.SENT
            )
        return result

    async def reconcile(self, message: OutboundMessage, since: dt.datetime) -> SendResult | None:
        self.reconciled.append(message)
        if message.message_id in self.reconcile_results:
            return self.reconcile_results[message.message_id]
        return self._provider.get(message.message_id)

    async def aclose(self) -> None:
        self.closed = True

    def sent_to(self, address: str) -> list[OutboundMessage]:
        return [m for m in self.sent if m.to == address]


class RecordingSmsChannel(RecordingChannel):
    channel: ClassVar[Channel] = Channel.SMS


class RecordingEmailChannel(RecordingChannel):
    channel: ClassVar[Channel] = Channel.EMAIL


class RecordingVoiceChannel(RecordingChannel):
    channel: ClassVar[Channel] = Channel.VOICE


_RECORDING_CHANNELS: dict[Channel, type[RecordingChannel]] = {
    Channel.SMS: RecordingSmsChannel,
    Channel.EMAIL: RecordingEmailChannel,
    Channel.VOICE: RecordingVoiceChannel,
}
