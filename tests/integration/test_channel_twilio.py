"""The Twilio SMS and voice channels against the sandbox: outcomes, faults, reconcile."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import AsyncIterator

import pytest

from dispatcher.channels.base import OutboundMessage, SendResult
from dispatcher.channels.twilio_client import mask, parse_retry_after, scrub
from dispatcher.channels.twilio_sms import TwilioSmsChannel
from dispatcher.channels.twilio_voice import TwilioVoiceChannel
from dispatcher.domain import Channel, MessageStatus
from dispatcher.sandbox import Sandbox, WebhookReceiver

TO = "+8613812345678"
FROM = "+15005550006"


@pytest.fixture(autouse=True)
def _region_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # The channel must reach the overridden API host even when these are set.
    monkeypatch.setenv("TWILIO_REGION", "au1")
    monkeypatch.setenv("TWILIO_EDGE", "sydney")


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=21, callback_delay_ms=2, timeout_hold_s=10) as sb:
        yield sb


@pytest.fixture
async def sms(sandbox: Sandbox) -> AsyncIterator[TwilioSmsChannel]:
    channel = TwilioSmsChannel(sandbox.account_sid, sandbox.auth_token, sandbox.twilio_url, timeout=0.5)
    yield channel
    await channel.aclose()


@pytest.fixture
async def voice(sandbox: Sandbox) -> AsyncIterator[TwilioVoiceChannel]:
    channel = TwilioVoiceChannel(sandbox.account_sid, sandbox.auth_token, sandbox.twilio_url, timeout=0.5)
    yield channel
    await channel.aclose()


def sms_message(
    message_id: int = 1, body: str = "Reminder: 10,270.00 due. Reply STOP to opt out.", **kw: object
) -> OutboundMessage:
    fields: dict[str, object] = {
        "message_id": message_id,
        "case_id": "C-1",
        "channel": Channel.SMS,
        "to": TO,
        "body": body,
        "idempotency_key": f"C-1:sms:dpd30:{message_id}",
        "sender": FROM,
        **kw,
    }
    return OutboundMessage(**fields)  # type: ignore[arg-type]


def voice_message(receiver: WebhookReceiver, message_id: int = 7, to: str = TO) -> OutboundMessage:
    return OutboundMessage(
        message_id=message_id,
        case_id="C-1",
        channel=Channel.VOICE,
        to=to,
        body="script",
        idempotency_key=f"C-1:voice:dpd60:{message_id}",
        sender=FROM,
        voice_url=receiver.url(f"/twilio/voice/answer?m={message_id}"),
        status_callback=receiver.url(f"/twilio/voice/status?m={message_id}"),
    )


def since() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)


# -- SMS ------------------------------------------------------------------------------


async def test_send_returns_the_sid_and_callbacks_reach_our_webhook(sandbox: Sandbox, sms: TwilioSmsChannel) -> None:
    async with WebhookReceiver(auth_token=sandbox.auth_token) as receiver:
        message = sms_message(status_callback=receiver.url("/twilio/sms/status?m=1"))
        result = await sms.send(message)
        assert result.status is MessageStatus.SENT and not result.retryable and result.error is None
        assert result.provider_id is not None and result.provider_id.startswith("SM")
        got = await receiver.wait_for(lambda r: len(r) == 2)
        assert [r.form["MessageStatus"] for r in got] == ["sent", "delivered"]
        assert all(r.signature_valid and r.form["MessageSid"] == result.provider_id for r in got)
    (record,) = sandbox.messages()
    assert (record["to"], record["from"], record["body"]) == (TO, FROM, message.body)
    assert record["status_callback"] == message.status_callback


async def test_messaging_service_is_used_when_configured(sandbox: Sandbox, sms: TwilioSmsChannel) -> None:
    service = "MG" + "a" * 32
    result = await sms.send(sms_message(sender=None, messaging_service_sid=service))
    assert result.status is MessageStatus.SENT
    assert sandbox.messages()[0]["messaging_service_sid"] == service
    assert (await sms.reconcile(sms_message(sender=None, messaging_service_sid=service), since())) is not None
    refused = await sms.send(sms_message(sender=None))
    assert refused.status is MessageStatus.FAILED and "sender" in (refused.error or "")


async def test_invalid_number_fails_for_good_and_says_invalid_address(sandbox: Sandbox, sms: TwilioSmsChannel) -> None:
    result = await sms.send(sms_message(to="+861"))
    assert result.status is MessageStatus.FAILED
    assert not result.retryable and not result.ambiguous
    assert result.error is not None and result.error.startswith("invalid address") and "21211" in result.error


async def test_429_is_retryable_with_retry_after(sandbox: Sandbox, sms: TwilioSmsChannel) -> None:
    sandbox.force_faults("429")
    result = await sms.send(sms_message())
    assert result.retryable and not result.ambiguous
    assert result.retry_after == 1.0
    assert "20429" in (result.error or "")
    assert sandbox.messages() == []


async def test_500_is_retryable_and_ambiguous_and_reconcile_finds_nothing(
    sandbox: Sandbox, sms: TwilioSmsChannel
) -> None:
    sandbox.force_faults("500")
    message = sms_message()
    result = await sms.send(message)
    assert result.retryable and result.ambiguous
    assert await sms.reconcile(message, since()) is None


@pytest.mark.parametrize("fault", ["timeout", "reset"])
async def test_ambiguous_faults_after_create_are_found_by_reconcile(
    sandbox: Sandbox, sms: TwilioSmsChannel, fault: str
) -> None:
    other = sms_message(message_id=2, body="a different reminder")
    assert (await sms.send(other)).status is MessageStatus.SENT
    sandbox.force_faults(fault)
    message = sms_message(message_id=3)
    result = await sms.send(message)
    assert result.ambiguous and result.retryable
    assert result.status is MessageStatus.FAILED and result.provider_id is None
    # The provider has it although the client saw an error:
    (record,) = [m for m in sandbox.messages() if m["body"] == message.body]
    assert record["fault"] == fault
    found = await sms.reconcile(message, since())
    assert found is not None
    assert found.provider_id == record["sid"]
    assert found.status in (MessageStatus.SENT, MessageStatus.DELIVERED)


async def test_reset_before_create_leaves_nothing_to_reconcile(sandbox: Sandbox, sms: TwilioSmsChannel) -> None:
    sandbox.force_faults("reset_before")
    message = sms_message()
    result = await sms.send(message)
    assert result.ambiguous and result.retryable
    assert sandbox.messages() == []
    assert await sms.reconcile(message, since()) is None
    retried = await sms.send(message)  # safe now: exactly one at the provider
    assert retried.status is MessageStatus.SENT
    assert [m["count"] for m in sandbox.messages()] == [1]


async def test_reconcile_reports_the_delivery_status_and_respects_since(
    sandbox: Sandbox, sms: TwilioSmsChannel
) -> None:
    message = sms_message()
    sent = await sms.send(message)
    await sandbox.drain()
    found = await sms.reconcile(message, since() - dt.timedelta(minutes=1))
    assert found == SendResult(provider_id=sent.provider_id, status=MessageStatus.DELIVERED)
    assert await sms.reconcile(message, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)) is None
    assert await sms.reconcile(sms_message(body="never sent"), since()) is None


async def test_connection_refused_is_retryable_and_not_ambiguous(sandbox: Sandbox) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = TwilioSmsChannel(sandbox.account_sid, sandbox.auth_token, f"http://127.0.0.1:{port}", timeout=0.5)
    try:
        result = await channel.send(sms_message())
    finally:
        await channel.aclose()
    assert result.retryable and not result.ambiguous
    assert "nothing was sent" in (result.error or "")


async def test_wrong_credentials_are_retryable_not_the_messages_fault(sandbox: Sandbox) -> None:
    channel = TwilioSmsChannel(sandbox.account_sid, "wrong", sandbox.twilio_url, timeout=0.5)
    try:
        result = await channel.send(sms_message())
    finally:
        await channel.aclose()
    assert result.retryable and not result.ambiguous and "TWILIO_AUTH_TOKEN" in (result.error or "")


async def test_concurrent_sends_share_one_client(sandbox: Sandbox, sms: TwilioSmsChannel) -> None:
    sandbox.force_faults("429", "429")
    results = await asyncio.gather(*(sms.send(sms_message(i, body=f"m{i}")) for i in range(20)))
    limited = [r for r in results if r.retry_after is not None]
    assert len(limited) == 2 and all(not r.ambiguous for r in limited)
    assert sum(r.status is MessageStatus.SENT for r in results) == 18
    assert len(sandbox.messages()) == 18


def test_masking_helpers() -> None:
    assert mask("+8613812345678") == "+86138****5678"
    assert mask("alice@example.com") == "a***@example.com"
    assert "13812345678" not in scrub("The 'To' number +8613812345678 is not valid")
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after(
        {"Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT", "Date": "Wed, 21 Oct 2026 07:28:00 GMT"}
    ) == 30.0
    assert parse_retry_after({}) is None


# -- voice ----------------------------------------------------------------------------


async def test_call_is_placed_with_amd_and_progress_events(sandbox: Sandbox, voice: TwilioVoiceChannel) -> None:
    async with WebhookReceiver(auth_token=sandbox.auth_token) as receiver:
        receiver.respond("/twilio/voice/answer", "<Response><Say>Hello from the bank.</Say></Response>")
        message = voice_message(receiver)
        result = await voice.send(message)
        assert result.status is MessageStatus.SENT and result.provider_id and result.provider_id.startswith("CA")
        await sandbox.drain()
        (call,) = sandbox.calls()
        assert call["machine_detection"] == "DetectMessageEnd"
        assert call["status_callback_events"] == ["initiated", "ringing", "answered", "completed"]
        assert call["url"] == message.voice_url and call["spoken"] == ["Hello from the bank."]
        statuses = [r.form["CallStatus"] for r in receiver.received("/twilio/voice/status")]
        assert statuses == ["initiated", "ringing", "in-progress", "completed"]
        assert receiver.received("/twilio/voice/answer")[0].url == message.voice_url
        found = await voice.reconcile(message, since())
        assert found == SendResult(provider_id=result.provider_id, status=MessageStatus.COMPLETED)


@pytest.mark.parametrize("fault", ["timeout", "reset"])
async def test_voice_ambiguous_faults_reconcile_to_the_call(
    sandbox: Sandbox, voice: TwilioVoiceChannel, fault: str
) -> None:
    async with WebhookReceiver(auth_token=sandbox.auth_token) as receiver:
        receiver.respond("/twilio/voice/answer", "<Response><Hangup/></Response>")
        sandbox.force_faults(fault)
        message = voice_message(receiver)
        result = await voice.send(message)
        assert result.ambiguous and result.retryable
        found = await voice.reconcile(message, since())
        assert found is not None and found.provider_id == sandbox.calls()[0]["sid"]
        await sandbox.drain()


async def test_voice_reconcile_finds_nothing_after_reset_before_or_503(
    sandbox: Sandbox, voice: TwilioVoiceChannel
) -> None:
    async with WebhookReceiver(auth_token=sandbox.auth_token) as receiver:
        for fault in ("reset_before", "503"):
            sandbox.force_faults(fault)
            message = voice_message(receiver)
            result = await voice.send(message)
            assert result.ambiguous and result.retryable
            assert await voice.reconcile(message, since()) is None
        missing = await voice.send(OutboundMessage(1, "C", Channel.VOICE, TO, "x", "k", sender=FROM))
        assert missing.status is MessageStatus.FAILED and "voice_url" in (missing.error or "")
