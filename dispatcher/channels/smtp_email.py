"""E-mail over SMTP with aiosmtplib: multipart text + HTML, one-click unsubscribe, VERP.

`DISPATCHER_SMTP_URL`: `smtp://[user:password@]host[:port]` (port 25 by default;
STARTTLS when the server offers it), `smtps://...` (implicit TLS, port 465), and
`?starttls=true` (require STARTTLS; port 587 by default) or `?starttls=false` (never).
User and password are percent-decoded.

The SMTP conversation is driven step by step (connect, MAIL, RCPT, DATA) rather than
through `aiosmtplib.send`, because the at-most-once contract depends on *where* it
failed:

| what happened | SendResult |
|---|---|
| accepted (250 after DATA) | SENT, provider_id = the Message-ID |
| RCPT refused with 5xx | FAILED, "hard bounce: ..." (the outbox marks the address invalid) |
| MAIL/RCPT/DATA refused with 4xx | retryable |
| MAIL or DATA refused with 5xx | FAILED, not retryable |
| cannot connect / TLS / AUTH / disconnect before DATA | retryable, not ambiguous: the server has nothing |
| disconnect or timeout after DATA started | **ambiguous**: the server may have accepted it |

A failure to connect is also `unreachable` (it counts toward the circuit breaker).

`reconcile` cannot ask an SMTP server whether it accepted a message, so it answers
SENT_UNCONFIRMED ("outcome unknown after DATA; not retried (at most once)"), under the
Message-ID the message went out with: it is never resent (a reminder that may be lost
is preferable to one that may be sent twice), and it counts as sent for the cadence and
the caps (it most likely reached the debtor). Bounces that arrive later (to the VERP
return path) still reach the case.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from typing import ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from dispatcher.channels.base import OutboundMessage, SendResult
from dispatcher.channels.mime import reminder_bytes
from dispatcher.clock import Clock, SystemClock
from dispatcher.domain import Channel, MessageStatus

log = logging.getLogger("dispatcher.channels.smtp_email")

#: RFC 5322 line endings; 7-bit transfer encodings so any relay accepts the message.
#: Headers the channel sets itself; `message.headers` cannot replace them.
_OWN_HEADERS = frozenset({"from", "to", "subject", "date", "message-id", "mime-version", "content-type"})
UNKNOWN_AFTER_DATA = "outcome unknown after DATA; not retried (at most once)"


@dataclass(frozen=True, slots=True)
class SmtpEndpoint:
    host: str
    port: int
    use_tls: bool
    start_tls: bool | None  # None: if offered
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SmtpEndpoint:
        """Parse `smtp://user:pass@host:port`, `smtps://...`, `?starttls=true|false`."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError(
                f"DISPATCHER_SMTP_URL must start with smtp:// or smtps://, e.g. smtp://user:pass@mail.example:587"
                f"?starttls=true (got scheme {parts.scheme!r})"
            )
        if not parts.hostname:
            raise ValueError("DISPATCHER_SMTP_URL has no host; write e.g. smtp://127.0.0.1:2525")
        query = {k.lower(): v[-1].lower() for k, v in parse_qs(parts.query).items()}
        start_tls: bool | None = None
        if "starttls" in query:
            if query["starttls"] not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("DISPATCHER_SMTP_URL: starttls must be true or false")
            start_tls = query["starttls"] in ("true", "1", "yes")
        use_tls = parts.scheme == "smtps"
        if use_tls and start_tls:
            raise ValueError("DISPATCHER_SMTP_URL: smtps:// is implicit TLS; drop ?starttls=true or use smtp://")
        if use_tls:
            start_tls = False
        try:
            port = parts.port
        except ValueError:
            raise ValueError("DISPATCHER_SMTP_URL has an invalid port") from None
        default_port = 465 if use_tls else 587 if start_tls else 25
        return cls(
            host=parts.hostname,
            port=port or default_port,
            use_tls=use_tls,
            start_tls=start_tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


class SmtpEmailChannel:
    """SMTP with a small pool of kept-open connections (a new connection per message
    costs a TCP and EHLO round trip, and TLS where used). A connection that failed is
    closed, never reused."""

    channel: ClassVar[Channel] = Channel.EMAIL
    name: ClassVar[str] = "smtp"

    def __init__(
        self,
        smtp_url: str,
        timeout: float = 15.0,
        *,
        clock: Clock | None = None,
        local_hostname: str = "dispatcher.localdomain",
        max_idle: int = 16,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        self.endpoint = SmtpEndpoint.parse(smtp_url)
        self.timeout = timeout
        self.clock = clock or SystemClock()
        self.local_hostname = local_hostname  # EHLO name; avoids a DNS lookup of our own FQDN
        self.max_idle = max_idle
        self._idle: list[aiosmtplib.SMTP] = []

    def build_message(self, message: OutboundMessage) -> tuple[bytes, str]:
        """The message's bytes and its Message-ID: From, To, Subject (RFC 2047 when
        non-ASCII), Date, Message-ID, the caller's extra headers (List-Unsubscribe, ...),
        then the text part and the optional HTML part (`dispatcher.channels.mime`)."""
        name, address = parseaddr(message.sender or "")
        message_id = self.message_id(message)
        headers = [
            ("From", formataddr((name, address), charset="utf-8") if name else address),
            ("To", message.to),
            ("Subject", message.subject or ""),
            ("Date", format_datetime(self.clock.now().astimezone(dt.UTC))),
            ("Message-ID", message_id),
        ]
        headers += [(key, value) for key, value in message.headers.items() if key.lower() not in _OWN_HEADERS]
        return reminder_bytes(headers, message.body, message.html or None), message_id

    @staticmethod
    def message_id(message: OutboundMessage) -> str:
        if not message.message_ref:
            return make_msgid(idstring=str(message.message_id))
        ref = message.message_ref.strip()
        return ref if ref.startswith("<") else f"<{ref}>"

    async def send(self, message: OutboundMessage) -> SendResult:
        """Hand the message to the SMTP server once. Never raises for SMTP or network errors."""
        if not message.sender:
            return SendResult(None, MessageStatus.FAILED, error="no From address: configure organisation.email_from")
        try:
            payload, message_id = self.build_message(message)
        except ValueError as exc:  # a header with a line break: never sent
            return SendResult(None, MessageStatus.FAILED, error=f"cannot build the e-mail: {exc}")
        envelope_from = message.return_path or message.sender
        client, reused = await self._checkout()
        phase = "connect"
        try:
            if not reused:
                await client.connect()
            phase = "envelope"
            try:
                await client.mail(envelope_from)
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                # An idle pooled connection the server had closed: nothing was sent yet,
                # so start over once on a fresh connection.
                client.close()
                client = self._new_client()
                phase = "connect"
                await client.connect()
                phase = "envelope"
                await client.mail(envelope_from)
            await client.rcpt(message.to)
            phase = "data"
            await client.data(payload)
            phase = "done"
        except Exception as exc:  # noqa: BLE001 - mapped onto a typed result; nothing escapes
            result = _result_for_error(exc, phase)
            log.warning("email %s: %s", message.message_id, result.error)
            if client.is_connected:
                client.close()
            return result
        self._checkin(client)
        log.info("email %s accepted as %s", message.message_id, message_id)
        return SendResult(provider_id=message_id, status=MessageStatus.SENT)

    def _new_client(self) -> aiosmtplib.SMTP:
        ep = self.endpoint
        return aiosmtplib.SMTP(
            hostname=ep.host,
            port=ep.port,
            use_tls=ep.use_tls,
            start_tls=ep.start_tls,
            username=ep.username,
            password=ep.password,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
        )

    async def _checkout(self) -> tuple[aiosmtplib.SMTP, bool]:
        """An idle pooled connection (reused=True) or a new, unconnected client."""
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
        return self._new_client(), False

    def _checkin(self, client: aiosmtplib.SMTP) -> None:
        if len(self._idle) < self.max_idle and client.is_connected:
            self._idle.append(client)
        else:
            client.close()

    async def reconcile(self, message: OutboundMessage, since: dt.datetime) -> SendResult | None:
        """SMTP cannot be asked: never claim "not sent" (a retry could duplicate it), nor
        "failed" (the cadence would plan another one): sent, unconfirmed."""
        return SendResult(provider_id=self.message_id(message), status=MessageStatus.SENT_UNCONFIRMED,
                          error=UNKNOWN_AFTER_DATA)

    async def probe(self) -> None:
        """Connect, greet and leave (the circuit breaker's probe). A server that answers,
        even with a refusal, is reachable; raises `OSError` when it cannot be reached."""
        client = self._new_client()
        try:
            await client.connect()
        except aiosmtplib.SMTPResponseException:
            return  # it answered, if only to refuse (e.g. 421 too busy)
        await _close(client, polite=True)

    async def aclose(self) -> None:
        """Close the pooled connections politely."""
        idle, self._idle = self._idle, []
        for client in idle:
            await _close(client, polite=True)


async def _close(client: aiosmtplib.SMTP, *, polite: bool) -> None:
    if not client.is_connected:
        return
    if polite:
        try:
            await client.quit()
            return
        except (aiosmtplib.SMTPException, OSError):
            pass
    client.close()


_ADDRESS = re.compile(r"[\w.+-]+@([\w-]+\.[\w.-]+)")


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    """The server's reply, with any quoted address masked (replies often echo it)."""
    text = " ".join(exc.message.split())
    return f"{exc.code} {_ADDRESS.sub(lambda m: m.group()[:1] + '***@' + m.group(1), text)}"


def _result_for_error(exc: BaseException, phase: str) -> SendResult:
    failed = MessageStatus.FAILED
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        if 500 <= exc.code < 600:
            return SendResult(None, failed, error=f"hard bounce: {_reply(exc)}")
        return SendResult(None, failed, retryable=True, error=f"recipient deferred: {_reply(exc)}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        return _result_for_error(exc.recipients[0], phase)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return SendResult(
            None, failed, retryable=True, error=f"SMTP login refused, check DISPATCHER_SMTP_URL: {_reply(exc)}"
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(exc, aiosmtplib.SMTPConnectError):
        # The server answered (MAIL, DATA or end of data): nothing is ambiguous.
        what = "sender refused" if isinstance(exc, aiosmtplib.SMTPSenderRefused) else "refused"
        if 400 <= exc.code < 500:
            return SendResult(None, failed, retryable=True, error=f"{what} (temporary): {_reply(exc)}")
        return SendResult(None, failed, error=f"{what}: {_reply(exc)}")
    name = type(exc).__name__
    if phase == "data":
        return SendResult(
            None, failed, retryable=True, ambiguous=True, error=f"{name} during DATA; {UNKNOWN_AFTER_DATA}"
        )
    # the connection could not be opened: counts toward the circuit breaker (`channels.guarded`)
    unreachable = phase == "connect" and isinstance(exc, OSError)
    return SendResult(None, failed, retryable=True, unreachable=unreachable,
                      error=f"{name} before DATA ({phase}); nothing was sent")
