"""The explicit registry of channel providers, and `build_channels` for the composition root.

Adding a provider = one module implementing `ChannelAdapter` + one line in
`CHANNEL_FACTORIES` (+ naming it in `PROVIDERS` if it becomes a default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dispatcher.channels.base import ChannelAdapter
from dispatcher.channels.file import FileChannel
from dispatcher.channels.reconcile import Ledger
from dispatcher.channels.smtp_email import SmtpEmailChannel
from dispatcher.channels.twilio_sms import TwilioSmsChannel
from dispatcher.channels.twilio_voice import TwilioVoiceChannel
from dispatcher.clock import Clock
from dispatcher.domain import Channel
from dispatcher.settings import Settings


class ChannelConfigError(ValueError):
    """A provider cannot be built from the settings; the message says what to set."""


@dataclass(frozen=True, slots=True)
class ChannelContext:
    """What a provider may need besides the settings: the provider timeout, the clock
    that stamps attempts and the store's ledger (both for reconcile)."""

    timeout: float = 15.0
    clock: Clock | None = None
    ledger: Ledger | None = None


ChannelFactory = Callable[[Settings, ChannelContext], ChannelAdapter]


def _twilio_credentials(settings: Settings) -> tuple[str, str]:
    if not settings.twilio_account_sid or not settings.twilio_auth_token:
        raise ChannelConfigError(
            "SMS and voice go through Twilio: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN "
            "(for the local sandbox also DISPATCHER_TWILIO_API_URL, see `dispatcher sandbox`), "
            "or set DISPATCHER_TRANSPORT=file for an offline run"
        )
    return settings.twilio_account_sid, settings.twilio_auth_token


def _twilio_sms(settings: Settings, ctx: ChannelContext) -> ChannelAdapter:
    sid, token = _twilio_credentials(settings)
    return TwilioSmsChannel(sid, token, settings.twilio_api_url, ctx.timeout, clock=ctx.clock, ledger=ctx.ledger)


def _twilio_voice(settings: Settings, ctx: ChannelContext) -> ChannelAdapter:
    sid, token = _twilio_credentials(settings)
    return TwilioVoiceChannel(sid, token, settings.twilio_api_url, ctx.timeout, clock=ctx.clock, ledger=ctx.ledger)


def _smtp(settings: Settings, ctx: ChannelContext) -> ChannelAdapter:
    if not settings.smtp_url:
        raise ChannelConfigError(
            "e-mail goes through SMTP: set DISPATCHER_SMTP_URL (smtp://user:pass@host:port, smtps:// for "
            "implicit TLS; the local sandbox prints its address), or set DISPATCHER_TRANSPORT=file"
        )
    try:
        return SmtpEmailChannel(settings.smtp_url, ctx.timeout)
    except ValueError as exc:
        raise ChannelConfigError(str(exc)) from None


def _file(channel: Channel) -> ChannelFactory:
    return lambda settings, ctx: FileChannel(channel, settings.spool_dir)


#: provider key -> factory(settings, context)
CHANNEL_FACTORIES: dict[str, ChannelFactory] = {
    "twilio-sms": _twilio_sms,
    "twilio-voice": _twilio_voice,
    "smtp": _smtp,
    "file-sms": _file(Channel.SMS),
    "file-email": _file(Channel.EMAIL),
    "file-voice": _file(Channel.VOICE),
}

#: the provider used for each channel, by transport (`DISPATCHER_TRANSPORT`; None = real providers)
PROVIDERS: dict[str | None, dict[Channel, str]] = {
    None: {Channel.SMS: "twilio-sms", Channel.VOICE: "twilio-voice", Channel.EMAIL: "smtp"},
    "file": {Channel.SMS: "file-sms", Channel.VOICE: "file-voice", Channel.EMAIL: "file-email"},
}


def build_channels(
    settings: Settings, timeout: float = 15.0, channels: Iterable[Channel] | None = None, *,
    clock: Clock | None = None, ledger: Ledger | None = None,
) -> dict[Channel, ChannelAdapter]:
    """One adapter per channel (all channels unless `channels` is given).

    `DISPATCHER_TRANSPORT=file` writes every message under `DISPATCHER_SPOOL_DIR`;
    otherwise SMS and voice use Twilio and e-mail uses SMTP. `clock` must be the clock
    that stamps attempts (the sender's) and `ledger` the store's: reconcile places the
    stamp on the provider's clock and asks our records which SIDs are whose. Raises
    `ChannelConfigError` naming the missing settings. The caller owns the adapters
    (`await adapter.aclose()`).
    """
    transport = (settings.transport or "").strip().lower() or None
    if transport not in PROVIDERS:
        known = ", ".join(sorted(k for k in PROVIDERS if k))
        raise ChannelConfigError(
            f"DISPATCHER_TRANSPORT={settings.transport!r} is not known; use one of: {known} (or leave it unset)"
        )
    wanted = list(channels) if channels is not None else list(Channel)
    ctx = ChannelContext(timeout, clock, ledger)
    return {channel: CHANNEL_FACTORIES[PROVIDERS[transport][channel]](settings, ctx) for channel in wanted}
