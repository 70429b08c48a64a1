"""One contract suite for every ChannelAdapter: file transport, Twilio SMS and voice and
SMTP against the sandbox over real sockets, and the in-package RecordingChannel fake.

The contract (dispatcher.channels.base): `channel`/`name` class attributes; `send`
hands a message over once, returns SENT with a provider id, and never raises for
provider trouble; after a successful send `reconcile` never answers None (None means
"the provider has no trace, a retry is safe"); `aclose` releases everything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import itertools
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dispatcher.channels.base import ChannelAdapter, OutboundMessage
from dispatcher.channels.file import FileChannel
from dispatcher.channels.recording import RecordingChannel
from dispatcher.channels.smtp_email import SmtpEmailChannel
from dispatcher.channels.twilio_sms import TwilioSmsChannel
from dispatcher.channels.twilio_voice import TwilioVoiceChannel
from dispatcher.domain import Channel, MessageStatus
from dispatcher.sandbox import Sandbox

ACCEPTED = {MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.RINGING, MessageStatus.IN_PROGRESS,
            MessageStatus.COMPLETED}
_ids = itertools.count(100)


@dataclasses.dataclass
class Subject:
    adapter: ChannelAdapter
    channel: Channel
    queryable: bool  # reconcile can tell "sent" from "not sent"
    broken: Callable[[], ChannelAdapter]  # the same kind of adapter, its provider unreachable


def message_for(channel: Channel, to: str | None = None) -> OutboundMessage:
    n = next(_ids)
    common = {"message_id": n, "case_id": f"C-{n}", "idempotency_key": f"C-{n}:{channel.value}:dpd30:2026-12-07"}
    if channel is Channel.EMAIL:
        return OutboundMessage(
            channel=channel,
            to=to or f"user{n}@example.com",
            body=f"Reminder {n}",
            subject=f"Reminder {n}",
            html=f"<p>Reminder {n}</p>",
            sender="reminders@bank.example",
            return_path=f"b+{n}@bounce.bank.example",
            message_ref=f"<dispatcher-{n}@bounce.bank.example>",
            headers={
                "List-Unsubscribe": "<https://x.example/u>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
            **common,  # type: ignore[arg-type]
        )
    phone = to or f"+86138{n:08d}"
    if channel is Channel.VOICE:
        return OutboundMessage(channel=channel, to=phone, body=f"Script {n}", sender="+15005550006",
                               voice_url="http://127.0.0.1:9/twilio/voice/answer", **common)  # type: ignore[arg-type]
    return OutboundMessage(channel=channel, to=phone, body=f"Reminder {n}: reply STOP to opt out",
                           sender="+15005550006", **common)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


KINDS = ["file-sms", "file-email", "file-voice", "twilio-sms", "twilio-voice", "smtp", "recording-sms"]


@pytest.fixture(params=KINDS)
async def subject(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Subject]:
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    kind: str = request.param
    if kind.startswith("file-"):
        channel = Channel(kind.removeprefix("file-"))
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("x")
        yield Subject(FileChannel(channel, tmp_path / "spool"), channel, True, lambda: FileChannel(channel, blocker))
        return
    if kind == "recording-sms":
        yield Subject(RecordingChannel(Channel.SMS), Channel.SMS, True, lambda: _unreachable_recording())
        return
    async with Sandbox(callback_delay_ms=1) as sandbox:
        dead = f"http://127.0.0.1:{closed_port()}"
        adapter: ChannelAdapter
        if kind == "twilio-sms":
            adapter = TwilioSmsChannel(sandbox.account_sid, sandbox.auth_token, sandbox.twilio_url, timeout=2)
            yield Subject(adapter, Channel.SMS, True,
                          lambda: TwilioSmsChannel(sandbox.account_sid, sandbox.auth_token, dead, timeout=2))
        elif kind == "twilio-voice":
            adapter = TwilioVoiceChannel(sandbox.account_sid, sandbox.auth_token, sandbox.twilio_url, timeout=2)
            yield Subject(adapter, Channel.VOICE, True,
                          lambda: TwilioVoiceChannel(sandbox.account_sid, sandbox.auth_token, dead, timeout=2))
        else:
            adapter = SmtpEmailChannel(sandbox.smtp_url, timeout=2)
            yield Subject(adapter, Channel.EMAIL, False,
                          lambda: SmtpEmailChannel(f"smtp://127.0.0.1:{closed_port()}", timeout=2))
        await adapter.aclose()
        await sandbox.drain()


def _unreachable_recording() -> ChannelAdapter:
    from dispatcher.channels.base import SendResult

    return RecordingChannel(
        Channel.SMS, respond=lambda m: SendResult(None, MessageStatus.FAILED, retryable=True, error="unreachable")
    )


def test_provider_facts_are_class_attributes(subject: Subject) -> None:
    cls = type(subject.adapter)
    assert cls.channel is subject.channel
    assert isinstance(cls.name, str) and cls.name
    for method in ("send", "reconcile", "aclose"):
        assert inspect.iscoroutinefunction(getattr(cls, method)), method


async def test_send_returns_sent_with_a_provider_id(subject: Subject) -> None:
    result = await subject.adapter.send(message_for(subject.channel))
    assert result.status is MessageStatus.SENT
    assert isinstance(result.provider_id, str) and result.provider_id
    assert not result.retryable and not result.ambiguous and result.error is None


async def test_reconcile_after_a_successful_send_never_says_not_sent(subject: Subject) -> None:
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    message = message_for(subject.channel)
    sent = await subject.adapter.send(message)
    found = await subject.adapter.reconcile(message, since)
    assert found is not None
    if subject.queryable:
        assert found.provider_id == sent.provider_id
        assert found.status in ACCEPTED
    else:  # SMTP cannot be asked: sent, unconfirmed (counted as sent), never retried
        assert found.status is MessageStatus.SENT_UNCONFIRMED and not found.retryable


async def test_reconcile_of_a_message_never_sent(subject: Subject) -> None:
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await subject.adapter.send(message_for(subject.channel))  # something else exists
    found = await subject.adapter.reconcile(message_for(subject.channel), since)
    if subject.queryable:
        assert found is None
    else:  # it cannot say "not sent": never retried (at most once)
        assert found is not None and found.status is MessageStatus.SENT_UNCONFIRMED and not found.retryable


async def test_an_unreachable_provider_gives_a_retryable_result_not_an_exception(subject: Subject) -> None:
    broken = subject.broken()
    try:
        result = await broken.send(message_for(subject.channel))
    finally:
        await broken.aclose()
    assert result.status is MessageStatus.FAILED
    assert result.retryable
    assert not result.ambiguous, "nothing reached the provider, so the outcome is known"
