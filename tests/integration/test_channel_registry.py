"""`build_channels`: providers chosen from the settings, and errors that say what to set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatcher.channels.base import OutboundMessage
from dispatcher.channels.file import FileChannel
from dispatcher.channels.registry import CHANNEL_FACTORIES, PROVIDERS, ChannelConfigError, build_channels
from dispatcher.channels.smtp_email import SmtpEmailChannel
from dispatcher.channels.twilio_sms import TwilioSmsChannel
from dispatcher.channels.twilio_voice import TwilioVoiceChannel
from dispatcher.domain import Channel, MessageStatus
from dispatcher.sandbox import Sandbox
from dispatcher.settings import Settings


async def test_file_transport_replaces_every_provider(tmp_path: Path) -> None:
    settings = Settings.from_env({"DISPATCHER_TRANSPORT": "file", "DISPATCHER_SPOOL_DIR": str(tmp_path)}, dotenv=False)
    channels = build_channels(settings)
    assert set(channels) == set(Channel)
    assert all(isinstance(c, FileChannel) and c.channel is ch for ch, c in channels.items())
    message = OutboundMessage(
        message_id=5, case_id="C-5", channel=Channel.EMAIL, to="a@example.com", body="text", idempotency_key="k",
        subject="主题", headers={"List-Unsubscribe": "<https://x.example/u>"},
    )
    result = await channels[Channel.EMAIL].send(message)
    assert (result.status, result.provider_id) == (MessageStatus.SENT, "file-5")
    written = json.loads((tmp_path / "email" / "5.json").read_text(encoding="utf-8"))
    assert written["subject"] == "主题" and written["channel"] == "email" and written["provider_id"] == "file-5"
    assert written["headers"] == {"List-Unsubscribe": "<https://x.example/u>"}
    assert [p.name for p in (tmp_path / "email").iterdir()] == ["5.json"]  # no temp files left


async def test_providers_from_the_environment() -> None:
    async with Sandbox() as sandbox:
        env = {
            "TWILIO_ACCOUNT_SID": sandbox.account_sid,
            "TWILIO_AUTH_TOKEN": sandbox.auth_token,
            "DISPATCHER_TWILIO_API_URL": sandbox.twilio_url,
            "DISPATCHER_SMTP_URL": sandbox.smtp_url,
        }
        channels = build_channels(Settings.from_env(env, dotenv=False), timeout=3)
        try:
            assert isinstance(channels[Channel.SMS], TwilioSmsChannel)
            assert isinstance(channels[Channel.VOICE], TwilioVoiceChannel)
            assert isinstance(channels[Channel.EMAIL], SmtpEmailChannel)
            sms = OutboundMessage(1, "C-1", Channel.SMS, "+8613800138000", "hi", "k", sender="+15005550006")
            assert (await channels[Channel.SMS].send(sms)).status is MessageStatus.SENT
        finally:
            for adapter in channels.values():
                await adapter.aclose()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"DISPATCHER_SMTP_URL": "smtp://127.0.0.1:2525"}, "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"),
        ({"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"}, "DISPATCHER_SMTP_URL"),
        ({"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t", "DISPATCHER_SMTP_URL": "http://x"}, "smtp://"),
        ({"DISPATCHER_TRANSPORT": "pigeon"}, "DISPATCHER_TRANSPORT"),
    ],
)
def test_missing_settings_say_what_to_set(env: dict[str, str], says: str) -> None:
    with pytest.raises(ChannelConfigError, match=says):
        build_channels(Settings.from_env(env, dotenv=False))


def test_only_the_requested_channels_are_built() -> None:
    settings = Settings.from_env({"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"}, dotenv=False)
    assert set(build_channels(settings, channels=[Channel.SMS, Channel.VOICE])) == {Channel.SMS, Channel.VOICE}


def test_registry_is_explicit_and_complete() -> None:
    for transport, providers in PROVIDERS.items():
        assert set(providers) == set(Channel), transport
        assert set(providers.values()) <= set(CHANNEL_FACTORIES)
