"""The one protocol every channel implements, and its typed result."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from dispatcher.domain import Channel, MessageStatus


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A rendered message ready for a provider. Addresses are full here; never log them."""

    message_id: int
    case_id: str
    channel: Channel
    to: str  # E.164 phone or e-mail address
    body: str  # SMS text, e-mail plain text, or the voice script
    idempotency_key: str
    locale: str = "en-US"
    subject: str | None = None  # e-mail
    html: str | None = None  # e-mail
    sender: str | None = None  # from number / from address
    messaging_service_sid: str | None = None  # SMS, instead of a from number
    status_callback: str | None = None  # Twilio status webhook URL
    voice_url: str | None = None  # TwiML URL for the call's answer
    headers: Mapping[str, str] = field(default_factory=dict)  # extra e-mail headers
    return_path: str | None = None  # e-mail envelope sender (VERP)
    message_ref: str | None = None  # e-mail Message-ID we assign


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened at the provider.

    `ambiguous` means the outcome is unknown (timeout, reset after the request went
    out): the outbox must reconcile with the provider before any retry. `unreachable`
    means the connection to the provider could not even be opened (refused, reset or
    timed out while connecting): nothing was sent, it counts toward the provider's
    circuit breaker, and the message waits without spending an attempt.
    """

    provider_id: str | None
    status: MessageStatus
    retryable: bool = False
    error: str | None = None
    ambiguous: bool = False
    retry_after: float | None = None  # seconds, from a 429's Retry-After
    unreachable: bool = False


class ChannelAdapter(Protocol):
    """A provider for one channel. Provider facts are class attributes."""

    channel: ClassVar[Channel]
    name: ClassVar[str]

    async def send(self, message: OutboundMessage) -> SendResult:
        """Hand the message to the provider once. Never raises for provider errors."""
        ...

    async def reconcile(self, message: OutboundMessage, since: dt.datetime) -> SendResult | None:
        """Find out whether an earlier, ambiguous attempt reached the provider.

        Returns the provider's record as a `SendResult`, or None if it has no trace of
        the message (so a retry cannot duplicate it). When the evidence can neither find
        the record nor rule a send out, a failed, non-retryable result whose error starts
        with "outcome unknown:" (at most once: the message is not resent). Raises when
        the provider cannot be asked at all (the caller tries again later)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


#: The error prefix of a reconcile that could neither find the message nor rule it out.
OUTCOME_UNKNOWN = "outcome unknown"


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """A message's or call's status as the provider reports it when asked (`fetch_status`),
    in the terms of its status callbacks, so it can be applied exactly like one."""

    provider_id: str
    provider_status: str  # the provider's own value, e.g. "delivered", "no-answer"
    status: MessageStatus  # mapped onto ours
    final: bool  # the provider will not change it any more
    error_code: str | None = None
    answered_by: str | None = None  # calls with machine detection
    duration: str | None = None  # call seconds


@runtime_checkable
class Probeable(Protocol):
    """A channel that can ask its provider whether it is reachable, without sending
    anything (the circuit breaker's probe)."""

    async def probe(self) -> None:
        """Return when the provider answered (whatever the answer); raise `OSError`
        (refused, reset, timed out) when it could not be reached."""
        ...


@runtime_checkable
class StatusSource(Protocol):
    """A channel whose provider can be asked for a status (Twilio SMS and voice; the file
    transport and SMTP have nothing to ask)."""

    async def fetch_status(self, provider_id: str) -> ProviderStatus | None:
        """The provider's current status of `provider_id`; None if it does not know it.
        Raises when the provider cannot be asked."""
        ...
